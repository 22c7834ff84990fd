"""report.html: self-contained, and every figure renders in a real headless browser."""

import html
import json
import os
import re
import shutil
import subprocess

import pytest

import tfedge
from tfedge import html_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
README = """# digits

Made by `python -m recipes.classifier`.

## Accuracy

```
model   test accuracy
------  -------------
float          98.00%
```

- `model.tflite`: full-int8 model.
"""

# Loads the report in an iframe and writes into its own DOM what the page did:
# how many images, how many decoded with a width, and every resource it fetched.
HARNESS = """<!DOCTYPE html><html><body><pre id="result">not loaded</pre>
<iframe id="page" src="report.html" width="1280" height="900"></iframe>
<script>
document.getElementById("page").addEventListener("load", function () {
  var doc = this.contentDocument, win = this.contentWindow;
  var images = Array.from(doc.images);
  document.getElementById("result").textContent = JSON.stringify({
    title: doc.title, images: images.length,
    rendered: images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
    resources: win.performance.getEntriesByType("resource").map(function (r) { return r.name; }),
    tables: doc.querySelectorAll("table").length, pre: doc.querySelectorAll("pre").length});
});
</script></body></html>"""


@pytest.fixture(scope="module")
def report_dir(digits_int8, trained_digits_cnn, tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    bench = tfedge.bench(digits_int8, target=["host", "rpi4", "cortex-m7"], runs=5,
                         emulate=False, name="digits")
    stages = [{"stage": "float", "accuracy": 0.98, "size_bytes": 100_000,
               "compressed_bytes": 90_000},
              {"stage": "int8", "accuracy": 0.975, "size_bytes": digits_int8.size_bytes,
               "compressed_bytes": 20_000, "kernel_sparsity": 0.0}]
    layers = [{"layer": "conv", "rmse_over_scale": 0.31}, {"layer": "logits",
                                                           "rmse_over_scale": 0.45}]
    path = html_report.write_report(
        folder / "report.html", title="digits <cnn>", summary="A `digits` classifier.",
        stages=stages, benchmark=bench.to_dict(),
        sparsity=tfedge.sparsity_report(trained_digits_cnn).rows,
        quantization_errors=layers, readme=README, links={"micro bundle": "micro/"})
    assert path == str(folder / "report.html")
    return folder


def test_report_is_one_self_contained_file_written_atomically(report_dir):
    assert sorted(os.listdir(report_dir)) == ["report.html"]  # no temporary file left
    text = (report_dir / "report.html").read_text()
    assert "<title>digits &lt;cnn&gt;</title>" in text  # escaped
    assert not re.search(r"(src|href)=\"(https?:)?//", text)  # nothing from the network
    assert "<script" not in text
    assert len(re.findall(r'<img src="data:image/png;base64,', text)) == 4
    assert "<pre>" in text and "float          98.00%" in text  # the README's table
    assert '<a href="micro/">micro bundle</a>' in text


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (make test installs it as root)")
def test_every_figure_renders_in_headless_chromium(report_dir):
    (report_dir / "harness.html").write_text(HARNESS)
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox",
         "--allow-file-access-from-files", "--virtual-time-budget=10000",
         "--enable-logging=stderr", "--v=0", "--dump-dom",
         (report_dir / "harness.html").as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    match = re.search(r'<pre id="result">([^<]*)</pre>', proc.stdout)
    assert match, proc.stdout[-2000:]
    result = json.loads(html.unescape(match.group(1)))
    assert result["title"] == "digits <cnn>"
    assert result["images"] == 4 and result["rendered"] == 4
    assert result["resources"] == []  # no file or network fetch: data URIs only
    assert result["tables"] >= 2 and result["pre"] >= 1
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console  # no script error, no failed load
