"""Training beyond one device: wrap under MirroredStrategy, and keras-tuner's chief/worker search.

Each test runs in subprocesses: logical devices must be configured before
TensorFlow initializes, and keras-tuner's distributed roles come from
environment variables read at start. Only 127.0.0.1 is used; every process is
bounded by a timeout and killed at the end, whatever happens.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))  # the repository: tests.helpers, tfedge
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
       "PYTHONPATH": os.pathsep.join([ROOT,
                                      os.environ.get("PYTHONPATH", "")])}
for _var in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT", "TF_CONFIG"):
    ENV.pop(_var, None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(script: str, tmp_path, timeout: float = 240) -> dict:
    path = tmp_path / "script.py"
    out = tmp_path / "out.json"
    path.write_text(textwrap.dedent(script))
    proc = subprocess.run([sys.executable, str(path), str(out)], env=ENV, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


MIRRORED = """
    import json, sys
    import tfedge
    import numpy as np
    import tensorflow as tf
    from tfedge import keras
    from tests.helpers import build_digits_cnn, compile_for_digits
    from tfedge.data import load_digits
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import (
        PruneLowMagnitude)

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    (x, y), (x_test, y_test) = load_digits()

    def train(strategy):
        keras.backend.clear_session()  # same layer names in both runs
        keras.utils.set_random_seed(0)
        with strategy.scope():
            edge = tfedge.wrap(build_digits_cnn(), prune=tfedge.PruneConfig(0.75, end_epoch=2))
            compile_for_digits(edge)
        # The same global batch: each of 2 replicas gets half of it.
        edge.fit(x, y, epochs=3, batch_size=64, shuffle=False, verbose=0)
        replicas = {"masks_equal": True, "kernels_equal": True, "steps": []}
        for layer in edge.network.layers:
            if not isinstance(layer, PruneLowMagnitude):
                continue
            replicas["steps"] += [int(s) for s in
                                  strategy.experimental_local_results(layer.pruning_step)]
            for weight, mask, _ in layer.pruning_vars:
                masks = [m.numpy() for m in strategy.experimental_local_results(mask)]
                kernels = [w.numpy() for w in strategy.experimental_local_results(weight)]
                replicas["masks_equal"] &= all(np.array_equal(masks[0], m) for m in masks)
                replicas["kernels_equal"] &= all(np.array_equal(kernels[0], k) for k in kernels)
        plain = compile_for_digits(edge.finish())
        report = tfedge.sparsity_report(plain)
        return {"replicas": strategy.num_replicas_in_sync, "per_replica": replicas,
                "sparsity": {r["layer"]: r["sparsity"] for r in report.rows},
                "accuracy": plain.evaluate(x_test, y_test, verbose=0)[1]}

    def all_phases(strategy):
        # Distillation from a teacher, pruning in epoch 0, sparsity-preserving QAT in
        # epoch 1: wrap rebuilds the network between phases, inside the strategy.
        xs, ys = x[:640], y[:640]
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        with strategy.scope():
            teacher = compile_for_digits(build_digits_cnn(32, "teacher"))
        teacher.fit(xs, ys, epochs=2, batch_size=64, verbose=0)
        with strategy.scope():
            edge = tfedge.wrap(build_digits_cnn(16, "student"), teacher=teacher,
                               prune=tfedge.PruneConfig(0.5, end_epoch=1), quantize=True)
            compile_for_digits(edge)
        history = edge.fit(xs, ys, epochs=2, batch_size=64, verbose=0)
        kernels_equal = all(
            all(np.array_equal(v[0].numpy(), r.numpy()) for r in v[1:])
            for v in (strategy.experimental_local_results(w) for w in edge.network.weights))
        plain = edge.finish()
        artifact = tfedge.convert(plain, representative_data=xs[:200])
        report = tfedge.validate(artifact, plain, x_test, y_test)
        return {"phases": [p.name for p in edge.phases], "kernels_equal": kernels_equal,
                "losses": sorted(history.history),
                "sparsity": tfedge.sparsity_report(plain).overall,
                "int8_sparsity": [r["sparsity"] for r in artifact.flatbuffer.weight_sparsity()
                                  if len(r["shape"]) > 1],
                "int8_agreement": report.agreement}

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    result = {"mirrored": train(mirrored), "single": train(tf.distribute.get_strategy())}
    import inspect
    if {"quantize", "teacher"} <= set(inspect.signature(tfedge.wrap).parameters):
        result["all_phases"] = all_phases(mirrored)
    json.dump(result, open(sys.argv[1], "w"))
"""


@pytest.mark.slow
def test_pruning_under_mirrored_strategy_equals_single_device(tmp_path):
    result = _run(MIRRORED, tmp_path)
    mirrored, single = result["mirrored"], result["single"]
    assert mirrored["replicas"] == 2 and single["replicas"] == 1
    # Step counters and masks stay the same on both replicas.
    steps = mirrored["per_replica"]["steps"]
    assert len(set(steps)) == 1 and steps[0] == 3 * 22  # 3 epochs of ceil(1347 / 64) steps
    assert mirrored["per_replica"]["masks_equal"] and mirrored["per_replica"]["kernels_equal"]
    # The target sparsity is reached, exactly as on one device.
    assert mirrored["sparsity"] == single["sparsity"]
    assert all(s == pytest.approx(0.75, abs=0.01) for s in mirrored["sparsity"].values())
    # Same data, same global batch, same initial weights: accuracy within tolerance.
    assert mirrored["accuracy"] == pytest.approx(single["accuracy"], abs=0.04)
    assert mirrored["accuracy"] > 0.7

    # Distillation + pruning + QAT phases, switched inside the strategy.
    phased = result.get("all_phases")
    if phased is None:
        pytest.skip("this tfedge.wrap has no QAT / distillation")
    assert phased["phases"] == ["prune", "quantize"] and phased["kernels_equal"]
    assert {"hard_loss", "soft_loss"} <= set(phased["losses"])
    assert phased["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert all(s >= 0.49 for s in phased["int8_sparsity"])  # survived QAT and conversion
    assert phased["int8_agreement"] >= 0.9  # the int8 model computes what was trained


MULTI_WORKER = """
    import json, os, sys
    import numpy as np
    import tfedge
    import tensorflow as tf
    from tfedge import keras
    from tests.helpers import build_digits_cnn, compile_for_digits
    from tfedge.data import load_digits

    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # cluster from TF_CONFIG
    (x, y), (x_test, y_test) = load_digits()
    keras.utils.set_random_seed(0)
    with strategy.scope():
        edge = tfedge.wrap(build_digits_cnn(), prune=tfedge.PruneConfig(0.75, end_epoch=1))
        compile_for_digits(edge)
    data = tf.data.Dataset.from_tensor_slices((x[:640], y[:640])).batch(64)  # global batch
    edge.fit(data, epochs=2, verbose=0)
    plain = compile_for_digits(edge.finish())
    json.dump({"workers": strategy.num_replicas_in_sync,
               "sparsity": tfedge.sparsity_report(plain).overall,
               "weights_sum": float(sum(np.abs(w).sum() for w in plain.get_weights())),
               "accuracy": plain.evaluate(x_test, y_test, verbose=0)[1]}, open(sys.argv[1], "w"))
"""


@pytest.mark.slow
def test_pruning_under_multi_worker_mirrored_strategy_on_two_local_workers(tmp_path):
    script = tmp_path / "multi_worker.py"
    script.write_text(textwrap.dedent(MULTI_WORKER))
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    try:
        for index in range(2):
            env = {**ENV, "TF_CONFIG": json.dumps({"cluster": cluster,
                                                   "task": {"type": "worker", "index": index}})}
            procs.append(subprocess.Popen([sys.executable, str(script),
                                           str(tmp_path / f"worker{index}.json")], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True, start_new_session=True))
        errors = [proc.communicate(timeout=240)[1] for proc in procs]
        for index, proc in enumerate(procs):
            assert proc.returncode == 0, f"worker {index} failed:\n{errors[index][-4000:]}"
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    results = [json.loads((tmp_path / f"worker{i}.json").read_text()) for i in range(2)]
    assert all(r["workers"] == 2 for r in results)
    assert all(r["sparsity"] == pytest.approx(0.75, abs=0.01) for r in results)
    # Both workers end with the same model: same weights, same accuracy.
    assert results[0]["weights_sum"] == results[1]["weights_sum"]
    assert results[0]["accuracy"] == results[1]["accuracy"]


WORKER = """
    import json, os, sys
    import tfedge
    from tfedge import keras
    from tests.helpers import build_cnn
    from tfedge.data import load_digits

    (x, y), _ = load_digits()
    result = tfedge.tune(
        build_cnn, (x[:-300], y[:-300]), validation_data=(x[-300:], y[-300:]),
        budget=tfedge.Budget(max_size_bytes=30_000),
        space=tfedge.SearchSpace(final_sparsity=[0.5], width=[1.0, 0.5]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), learning_rate=5e-3,
        epochs=1, max_trials=2, oracle="grid", directory=sys.argv[2], project_name="dist")
    out = {"role": result.role, "ran": result.ran, "front": result.front,
           "trials": [t.to_dict() for t in result.trials], "files": result.files}
    json.dump(out, open(sys.argv[1], "w"))
"""


@pytest.mark.slow
def test_chief_and_worker_complete_a_search_together(tmp_path):
    pytest.importorskip("grpc")  # keras-tuner's distributed mode speaks gRPC
    script = tmp_path / "tune_process.py"
    script.write_text(textwrap.dedent(WORKER))
    directory = str(tmp_path / "runs")
    port = str(_free_port())
    procs = {}
    try:
        for role in ("chief", "tuner0"):
            env = {**ENV, "KERASTUNER_TUNER_ID": role, "KERASTUNER_ORACLE_IP": "127.0.0.1",
                   "KERASTUNER_ORACLE_PORT": port}
            procs[role] = subprocess.Popen(
                [sys.executable, str(script), str(tmp_path / f"{role}.json"), directory],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                start_new_session=True)
        errors = {}
        for role in ("tuner0", "chief"):  # the worker finishes first, then the chief stops
            _, errors[role] = procs[role].communicate(timeout=240)
        for role, proc in procs.items():
            assert proc.returncode == 0, f"{role} failed:\n{errors[role][-4000:]}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)

    worker = json.loads((tmp_path / "tuner0.json").read_text())
    chief = json.loads((tmp_path / "chief.json").read_text())
    # The worker ran every trial; the chief ran none, but knows them all and reports.
    assert worker["role"] == "worker" and sorted(worker["ran"]) == ["0", "1"]
    assert chief["role"] == "chief" and chief["ran"] == []
    assert [t["status"] for t in chief["trials"]] == ["COMPLETED", "COMPLETED"]
    assert [t["feasible"] for t in chief["trials"]] == [False, True]  # width 1.0 is > 30 KB
    assert chief["front"] == ["1"]
    assert os.path.exists(chief["files"]["json"]) and os.path.exists(chief["files"]["best"])
    for trial in chief["trials"]:
        assert trial["message"].startswith("tuner tuner0")  # the worker that ran it
