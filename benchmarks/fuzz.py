"""Damaged .tflite files through every entry point: clear errors, never a crash or a hang.

Truncations, bit flips, overwritten byte runs and swapped headers of a real
full-int8 digits CNN go through ``tfedge.load``, ``tfedge inspect`` (the CLI),
``tfedge.validate``, ``tfedge.export_android``, ``tfedge.export_micro`` and
``tfedge.check_bundle`` (on a bundle whose ``model.tflite`` is the damaged
file). They run in a worker process, one file at a time: if the worker dies,
that file crashed tfedge; if it does not answer within ``--timeout`` seconds,
it hung. Each call is classified:

* ``accepted``: it worked (the damage was harmless, e.g. in padding);
* ``clear``: a tfedge error (``tfedge.errors``) or a ``ValueError`` naming the
  problem; for ``check_bundle``, a failed check;
* ``other``: any other exception (cryptic: the goal is zero);
* ``crash`` / ``hang``: the goal is zero.

    python benchmarks/fuzz.py [--files 240] [--seed 0]
        [--out benchmarks/results/fuzz.json]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ENTRY_POINTS = ("load", "inspect", "validate", "export_android", "export_micro",
                "check_bundle")

_WORKER = r"""
import contextlib, faulthandler, io, json, os, shutil, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
from absl import logging
logging.set_verbosity(logging.ERROR)
import tfedge
from tfedge import cli, keras
from tfedge.errors import TFEdgeError

work = sys.argv[1]
stacks = open(os.path.join(work, "stacks.txt"), "a")  # where a hang shows where it hangs
timeout = float(sys.argv[2])
model = keras.models.load_model(os.path.join(work, "model.keras"), compile=False)
x = np.load(os.path.join(work, "x.npy"))
good_bundle = os.path.join(work, "bundle")

def outcome(fn):
    try:
        result = fn()
    except (TFEdgeError, ValueError) as err:
        return "clear", f"{type(err).__name__}: {str(err)[:120]}"
    except Exception as err:
        return "other", f"{type(err).__name__}: {str(err)[:200]}"
    if hasattr(result, "ok") and not result.ok:
        return "clear", "check failed"
    if isinstance(result, int) and result != 0:
        return "clear", f"exit status {result}"
    return "accepted", ""

def inspect(path):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return cli.main(["inspect", path])

def check(path):
    bundle = os.path.join(work, "check")
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(good_bundle, bundle)
    shutil.copy(path, os.path.join(bundle, "model.tflite"))
    return tfedge.check_bundle(bundle)

def export(fn, path, name):
    out = os.path.join(work, name)
    shutil.rmtree(out, ignore_errors=True)
    return fn(path, out, sample_inputs=x[:4])

print("ready", flush=True)
for line in sys.stdin:
    path = line.strip()
    row = {}
    for name, fn in (("load", lambda: tfedge.load(path)),
                     ("inspect", lambda: inspect(path)),
                     ("validate", lambda: tfedge.validate(path, model, x[:16])),
                     ("export_android", lambda: export(tfedge.export_android, path, "a")),
                     ("export_micro", lambda: export(tfedge.export_micro, path, "m")),
                     ("check_bundle", lambda: check(path))):
        print(json.dumps({"started": name}), flush=True)
        stacks.write(f"--- {path} {name}\n")
        stacks.flush()
        faulthandler.dump_traceback_later(0.8 * timeout, file=stacks)
        result = outcome(fn)
        faulthandler.cancel_dump_traceback_later()
        print(json.dumps({"result": [name, *result]}), flush=True)
    print(json.dumps({"done": True}), flush=True)
"""


def damaged_copies(content: bytes, n: int, seed: int):
    """(kind, bytes): truncations, bit flips, overwritten runs, foreign headers, in turn."""
    rng = np.random.default_rng(seed)
    kinds = ("truncate", "bitflip", "bitflips", "overwrite", "header")
    for k in range(n):
        kind = kinds[k % len(kinds)]
        v = bytearray(content)
        if kind == "truncate":
            v = v[:int(rng.integers(0, len(v)))]
        elif kind in ("bitflip", "bitflips"):
            for _ in range(1 if kind == "bitflip" else int(rng.integers(2, 16))):
                i = int(rng.integers(0, len(v)))
                v[i] ^= 1 << int(rng.integers(8))
        elif kind == "overwrite":
            start = int(rng.integers(0, len(v)))
            size = int(rng.integers(1, 64))
            v[start:start + size] = rng.integers(0, 256, min(size, len(v) - start),
                                                 dtype=np.uint8).tobytes()
        else:  # a real header on foreign bytes, or a foreign header on the model
            v = (v[:8] + rng.integers(0, 256, len(v) - 8, dtype=np.uint8).tobytes()
                 if k % 2 else b"PK\x03\x04" + bytes(v[4:]))
        yield kind, bytes(v)


def _syscalls(pid: int) -> str:
    """What each thread of a hung process waits in (/proc/PID/task/*/wchan and syscall)."""
    out = []
    for task in sorted(os.listdir(f"/proc/{pid}/task"))[:8]:
        try:
            with open(f"/proc/{pid}/task/{task}/wchan") as f:
                wchan = f.read().strip()
            with open(f"/proc/{pid}/task/{task}/syscall") as f:
                call = f.read().split()[0]
        except OSError:
            continue
        out.append(f"{wchan}({call})")
    children = subprocess.run(["ps", "--ppid", str(pid), "-o", "pid=,args="],
                              capture_output=True, text=True).stdout.strip()
    return ", ".join(out) + (f"; children: {children[:200]}" if children else "")


class Worker:
    """The worker process: one file per request; a death is a crash, silence a hang."""

    def __init__(self, work: str, timeout: float):
        self.work = work
        self.timeout = timeout
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER, self.work,
                                      str(self.timeout)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.lines: queue.Queue = queue.Queue()  # a thread reads: select() misses buffered lines
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines),
                         daemon=True).start()
        if self.lines.get(timeout=600).strip() != "ready":
            raise RuntimeError("the fuzz worker did not start")

    @staticmethod
    def _read(stream, lines: queue.Queue) -> None:
        for line in stream:
            lines.put(line)
        lines.put("")  # end of output: the worker died

    def run(self, path: str, timeout: float) -> dict[str, tuple[str, str]]:
        self.proc.stdin.write(path + "\n")
        self.proc.stdin.flush()
        row: dict[str, tuple[str, str]] = {}
        current = None
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:  # no answer in time: a hang
                self.where = _syscalls(self.proc.pid)
                self.proc.kill()
                self.proc.wait()
                row[current or "load"] = ("hang", f"no answer in {timeout:.0f} s")
                self.start()
                return row
            if not line:  # the worker died: a crash
                code = self.proc.wait()
                row[current or "load"] = ("crash", f"worker exit status {code}")
                self.start()
                return row
            message = json.loads(line)
            if "started" in message:
                current = message["started"]
                deadline = time.monotonic() + timeout
            elif "result" in message:
                name, label, detail = message["result"]
                row[name] = (label, detail)
            else:
                return row

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def prepare(work: str, epochs: int) -> bytes:
    """Trains and converts the digits CNN; writes model.keras, x.npy and a good bundle."""
    import tfedge
    from tfedge import keras
    from tfedge.data import load_digits

    (x, y), (x_test, _) = load_digits()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(32, activation="relu")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    artifact = tfedge.convert(model, x[:200])
    model.save(os.path.join(work, "model.keras"))
    np.save(os.path.join(work, "x.npy"), x_test[:16])
    tfedge.export_android(artifact, os.path.join(work, "bundle"), sample_inputs=x_test[:4])
    return artifact.content


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=240, help="Damaged files to try.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the damage.")
    parser.add_argument("--epochs", type=int, default=3, help="Training epochs of the model.")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="Seconds one entry point may take on one file before it counts "
                             "as a hang.")
    parser.add_argument("--keep", metavar="DIR",
                        help="Keep the files that crashed, hung or gave another error here.")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "fuzz.json"),
                        help="Where to write the JSON results.")
    args = parser.parse_args(argv)

    from tfedge.report import format_table, write_json

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tfedge-fuzz-") as work:
        content = prepare(work, args.epochs)
        worker = Worker(work, args.timeout)
        counts = {e: {"accepted": 0, "clear": 0, "other": 0, "crash": 0, "hang": 0}
                  for e in ENTRY_POINTS}
        by_kind: dict[str, dict[str, int]] = {}
        problems = []
        later: list[dict] = []
        for k, (kind, data) in enumerate(damaged_copies(content, args.files, args.seed)):
            path = os.path.join(work, f"damaged_{k}.tflite")
            with open(path, "wb") as f:
                f.write(data)
            row = worker.run(path, args.timeout)
            for entry, (label, detail) in row.items():
                counts[entry][label] += 1
                if label == "hang":
                    with open(os.path.join(work, "stacks.txt")) as f:
                        detail += f"; threads: {worker.where}; where: " + " | ".join(
                            line.strip() for line in f.read().rsplit("---", 1)[-1]
                            .splitlines() if line.strip().startswith("File"))[:600]
                if label in ("other", "crash", "hang"):
                    problems.append({"file": k, "kind": kind, "entry": entry, "result": label,
                                     "detail": detail})
                    print(f"  file {k} ({kind}), {entry}: {label}: {detail}", flush=True)
                    if args.keep:
                        os.makedirs(args.keep, exist_ok=True)
                        with open(os.path.join(args.keep, f"{k}_{entry}.tflite"), "wb") as f:
                            f.write(data)
            verdict = row.get("load", ("crash", ""))[0]
            if verdict == "accepted":  # what the later stages caught that load let through
                for entry, (label, detail) in row.items():
                    if label == "clear" and entry != "check_bundle" and len(later) < 30:
                        later.append({"file": k, "kind": kind, "entry": entry,
                                      "detail": detail})
            by_kind.setdefault(kind, {}).setdefault(verdict, 0)
            by_kind[kind][verdict] += 1
            os.unlink(path)
            if (k + 1) % 20 == 0:
                print(f"{k + 1}/{args.files} files, {time.perf_counter() - started:.0f} s",
                      flush=True)
        worker.close()
    seconds = time.perf_counter() - started
    rows = [[e, sum(c.values()), c["accepted"], c["clear"], c["other"], c["crash"], c["hang"]]
            for e, c in counts.items()]
    print(format_table(["entry point", "files", "accepted", "clear error", "other error",
                        "crash", "hang"], rows,
                       title=f"{args.files} damaged copies of a {len(content):,}-byte int8 "
                             f"model ({seconds:.0f} s)"))
    print(format_table(["damage", "load: accepted", "load: clear error"],
                       [[k, v.get("accepted", 0), v.get("clear", 0)]
                        for k, v in by_kind.items()]))
    for p in problems[:20]:
        print(f"  file {p['file']} ({p['kind']}), {p['entry']}: {p['result']}: {p['detail']}")
    totals = {label: sum(c[label] for c in counts.values())
              for label in ("accepted", "clear", "other", "crash", "hang")}
    write_json(args.out, {"files": args.files, "seed": args.seed,
                          "model_bytes": len(content), "seconds": round(seconds, 1),
                          "entry_points": counts, "totals": totals, "load_by_damage": by_kind,
                          "problems": problems, "caught_after_load": later})
    print(f"wrote {args.out}")
    return 0 if not (totals["crash"] or totals["hang"]) else 1


if __name__ == "__main__":
    sys.exit(main())
