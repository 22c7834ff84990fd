"""Runs one .tflite model in LiteRT and reports what tfedge's benchmark needs.

This file is executed as a script, never imported by tfedge: on the host by
the host Python (host latency mode) and under ``qemu-aarch64`` by the aarch64
sysroot's Python (instruction count mode). It needs only the standard
library, NumPy and ``ai_edge_litert``, so it starts fast in both places.

Usage: ``python runner.py SPEC.json`` where the spec holds::

    {"model": path, "inputs": [npy paths, one per model input],
     "outputs_dir": path, "result": path, "mode": "host" | "count",
     "num_threads": int, "op_resolver": "auto" | "builtin" | "reference" | "no_delegates",
     "warmup": int, "runs": int, "empty_windows": int}

``host`` mode times ``invoke()`` (init, first run, warm-up, timed runs) and
reads the process's memory high-water mark; ``count`` mode brackets each
``invoke()`` with the marker system call (``os.sched_yield``) that the qemu
plugin turns into an instruction-count reading, after ``empty_windows``
brackets around nothing, which measure the cost of the markers themselves.
Both modes save the outputs of the first inference as ``.npy`` files.
"""

import json
import os
import sys
import time

import numpy as np
from ai_edge_litert import interpreter as litert

_RESOLVERS = {
    "auto": litert.OpResolverType.AUTO,
    "builtin": litert.OpResolverType.BUILTIN,
    "reference": litert.OpResolverType.BUILTIN_REF,
    "no_delegates": litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
}


def _memory_kb():
    """(VmHWM, VmRSS) of this process in kB, from /proc/self/status."""
    values = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    values[key] = int(rest.split()[0])
    except OSError:
        pass
    return values.get("VmHWM"), values.get("VmRSS")


def _reset_peak_memory():
    """Lowers VmHWM to the current RSS (Linux 4.0+), so the peak is the interpreter's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _delegation(interpreter):
    """How many of the model's nodes the delegate(s) took, from the node list.

    LiteRT appends one DELEGATE node per partition after the model's own
    nodes; a model node belongs to a partition when it is reached walking back
    from the partition's outputs without crossing the partition's inputs.
    """
    ops = interpreter._get_ops_details()  # pylint: disable=protected-access
    own = [op for op in ops if op["op_name"] != "DELEGATE"]
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    producer = {int(t): op["index"] for op in own for t in op["outputs"]}
    by_index = {op["index"]: op for op in own}
    taken = set()
    for d in delegates:
        boundary = {int(t) for t in d["inputs"]}
        stack = [int(t) for t in d["outputs"]]
        seen = set()
        while stack:
            t = stack.pop()
            if t in seen or t in boundary or t not in producer:
                continue
            seen.add(t)
            node = producer[t]
            taken.add(node)
            stack.extend(int(i) for i in by_index[node]["inputs"] if i >= 0)
    return {"nodes": len(own), "delegated_nodes": len(taken), "partitions": len(delegates)}


def _set_inputs(interpreter, arrays):
    for detail, x in zip(interpreter.get_input_details(), arrays):
        interpreter.set_tensor(detail["index"], x)


def _save_outputs(interpreter, outputs_dir):
    paths = []
    for i, detail in enumerate(interpreter.get_output_details()):
        path = os.path.join(outputs_dir, f"output_{i}.npy")
        np.save(path, interpreter.get_tensor(detail["index"]))
        paths.append(path)
    return paths


def main(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    arrays = [np.load(p) for p in spec["inputs"]]
    if spec["mode"] == "host":
        _reset_peak_memory()
    hwm_before, rss_before = _memory_kb()

    start = time.perf_counter_ns()
    interpreter = litert.Interpreter(
        model_path=spec["model"], num_threads=spec["num_threads"],
        experimental_op_resolver_type=_RESOLVERS[spec["op_resolver"]])
    interpreter.allocate_tensors()
    init_ns = time.perf_counter_ns() - start
    _set_inputs(interpreter, arrays)

    start = time.perf_counter_ns()
    interpreter.invoke()
    first_ns = time.perf_counter_ns() - start
    result = {"init_ns": init_ns, "first_ns": first_ns,
              "outputs": _save_outputs(interpreter, spec["outputs_dir"]),
              **_delegation(interpreter)}

    if spec["mode"] == "count":
        for _ in range(spec["warmup"]):
            interpreter.invoke()
        for _ in range(spec["empty_windows"]):
            os.sched_yield()
            os.sched_yield()
        for _ in range(spec["runs"]):
            _set_inputs(interpreter, arrays)
            os.sched_yield()
            interpreter.invoke()
            os.sched_yield()
    else:
        for _ in range(spec["warmup"]):
            interpreter.invoke()
        times = []
        for _ in range(spec["runs"]):
            start = time.perf_counter_ns()
            interpreter.invoke()
            times.append(time.perf_counter_ns() - start)
        result["times_ns"] = times
    hwm_after, rss_after = _memory_kb()
    result.update({"hwm_before_kb": hwm_before, "rss_before_kb": rss_before,
                   "hwm_after_kb": hwm_after, "rss_after_kb": rss_after})
    # (not tfedge.report.write_json: this script runs alone, in the aarch64 sysroot
    # under qemu, where tfedge is not importable; the parent reads the file after exit)
    with open(spec["result"], "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
