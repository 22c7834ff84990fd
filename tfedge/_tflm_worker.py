"""Runs a model in TensorFlow Lite for Microcontrollers, in a process of its own.

TFLM's Python interpreter (PyPI ``tflite-micro``) can abort the whole process
on some models (SIGABRT, no message), so :mod:`tfedge.micro` never loads it
in the caller's process: it runs this file as a script, by path, and turns a
death into a clear error. The script imports only NumPy and TFLM (not tfedge,
whose import pulls in TensorFlow and takes seconds).

Usage: ``python _tflm_worker.py REQUEST.json``. The request holds ``model``
(a .tflite path), ``num_outputs``, ``inputs`` (an .npz of ``input_<i>``
arrays, samples first, already in the input tensors' dtypes), ``outputs``
(where to write the ``output_<i>`` arrays) and ``arena_size`` (bytes, or null
to measure the smallest arena that works). Progress lines ``stage <name>`` go to stdout; the
last line printed is the JSON result.

Measuring the arena: TFLM's recording allocator reports what the arena holds
after a run, but that total is only a lower bound: during ``AllocateTensors``
the memory planner also needs scratch space (its buffer list, e.g. "Too many
buffers (max is 10)" when it is short) that the recording does not count. So
the smallest arena is found by search, in steps of TFLM's arena alignment
(:data:`ALIGNMENT`: TFLM aligns the arena's start up and its end down to it,
so only multiples of it matter), from the recorded total upwards: each probe
allocates the model and runs one sample in a forked child, so a probe that
crashes TFLM (some too-small arenas abort instead of failing) only fails that
probe. Arena use does not depend on input values (TFLM plans memory
statically), and the chosen arena then runs every sample.
"""

import json
import os
import re
import sys
import tempfile

import numpy as np

# TFLM's MicroArenaBufferAlignment() (tensorflow/lite/micro/memory_helpers.h).
ALIGNMENT = 16
_FIRST_ARENA = 64 << 20
_MAX_ARENA = 1 << 30
_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")


class _StderrCapture:
    """Captures what C++ code writes to file descriptor 2 (TFLM's MicroPrintf)."""

    def __enter__(self):
        sys.stderr.flush()
        self._file = tempfile.TemporaryFile(mode="w+b")
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read().decode(errors="replace").strip()
        self._file.close()
        return False


def _stage(name, arena_size=None):
    """Says on stdout what runs next, so a parent can tell where a crash happened."""
    print(f"stage {name}" + (f" {arena_size}" if arena_size else ""), flush=True)


def _interpreter(runtime, content, arena_size, stage="load"):
    """(interpreter or None, TFLM's messages)."""
    _stage(stage, arena_size)
    with _StderrCapture() as capture:
        try:
            interpreter = runtime.Interpreter.from_bytes(content, arena_size=arena_size)
        except RuntimeError:
            interpreter = None
    return interpreter, capture.text


def _arena_too_small(log):
    return "Failed to resize buffer" in log or "Failed to allocate" in log


def _recorded_total(interpreter):
    with _StderrCapture() as capture:
        interpreter.print_allocations()
    match = _TOTAL.search(capture.text)
    return int(match.group(1)) if match else None


def _align_up(size):
    return -(-int(size) // ALIGNMENT) * ALIGNMENT


def _fits(runtime, content, inputs, arena_size):
    """Whether TFLM allocates the model in ``arena_size`` bytes and runs one sample.

    The probe runs in a forked child (TFLM may abort on a too-small arena);
    its messages are discarded.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child: exit status 0 means it allocated and ran
        status = 1
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            interpreter = runtime.Interpreter.from_bytes(content, arena_size=int(arena_size))
            for i, batch in enumerate(inputs):
                interpreter.set_input(batch[:1], i)
            interpreter.invoke()
            status = 0
        except BaseException:  # any failure is a failed probe
            status = 1
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def _smallest_arena(runtime, content, inputs, recorded, known_good):
    """The smallest multiple of :data:`ALIGNMENT` that allocates and runs the model.

    Args:
        recorded: TFLM's recorded arena use (a lower bound).
        known_good: an arena size known to work.

    Returns:
        ``(arena bytes, [(probed size, fits), ...])``.
    """
    probes = []

    def fits(size):
        ok = _fits(runtime, content, inputs, size)
        probes.append([int(size), bool(ok)])
        return ok

    low = _align_up(recorded) - ALIGNMENT  # below the recorded use: cannot fit
    step = ALIGNMENT
    high = low + step
    while high < known_good and not fits(high):  # grow until an arena fits
        low = high
        step *= 2
        high = min(low + step, known_good)
    high = min(high, known_good)
    while high - low > ALIGNMENT:  # invariant: low fails (or is below the bound), high fits
        middle = _align_up((low + high) // 2)
        if middle >= high:
            middle = high - ALIGNMENT
        if fits(middle):
            high = middle
        else:
            low = middle
    return int(high), probes


def _run(interpreter, inputs, num_outputs):
    """Invokes the interpreter once per sample; returns outputs, samples first."""
    rows = []
    for n in range(len(inputs[0]) if inputs else 0):
        for i, batch in enumerate(inputs):
            interpreter.set_input(batch[n:n + 1], i)
        interpreter.invoke()
        rows.append([np.array(interpreter.get_output(k)) for k in range(num_outputs)])
    return [np.concatenate([row[k] for row in rows]) for k in range(num_outputs)] if rows else []


def main(request_path):
    from tflite_micro.python.tflite_micro import runtime

    with open(request_path) as f:
        request = json.load(f)
    with open(request["model"], "rb") as f:
        content = f.read()
    inputs = []
    if request.get("inputs"):
        with np.load(request["inputs"]) as data:
            inputs = [data[f"input_{i}"] for i in range(len(data.files))]

    result = {"ok": False}
    arena = request.get("arena_size")
    if arena:
        interpreter, log = _interpreter(runtime, content, int(arena))
        if interpreter is None:
            result.update(stage="allocate", arena_size=int(arena), log=log)
            return result
    else:
        # Start large: TFLM can crash (not fail) on some arenas that are too small.
        arena = max(_FIRST_ARENA, 16 * len(content))
        while True:
            interpreter, log = _interpreter(runtime, content, arena)
            if interpreter is not None:
                break
            if not _arena_too_small(log) or arena >= _MAX_ARENA:
                result.update(stage="allocate", arena_size=arena, log=log)
                return result
            arena *= 2
        # The recording allocator reports what the arena really holds after a run: a
        # lower bound of the smallest arena (see the module docstring).
        _stage("measure", arena)
        for i, batch in enumerate(inputs):
            interpreter.set_input(batch[:1], i)
        interpreter.invoke()
        total = _recorded_total(interpreter)
        if total is None:
            result.update(stage="measure", log="TFLM did not report its arena use.")
            return result
        del interpreter
        arena, probes = _smallest_arena(runtime, content, inputs, total, arena)
        result.update(recorded_size=int(total), probes=probes)
        interpreter, log = _interpreter(runtime, content, arena, "measure")
        if interpreter is None:
            result.update(stage="allocate", arena_size=arena,
                          log=f"TFLM allocated the model in a {arena}-byte arena in a probe "
                              f"but not again:\n{log}")
            return result
    result["arena_size"] = int(arena)

    _stage("invoke")
    with _StderrCapture() as capture:
        try:
            outputs = _run(interpreter, inputs, int(request.get("num_outputs", 1)))
        except RuntimeError as err:
            outputs, error = None, str(err)
    if outputs is None:
        result.update(stage="invoke", log=(capture.text + "\n" + error).strip())
        return result
    if request.get("outputs"):
        np.savez(request["outputs"], **{f"output_{k}": out for k, out in enumerate(outputs)})
    result.update(ok=True, num_samples=len(inputs[0]) if inputs else 0,
                  num_outputs=len(outputs))
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
