"""The report in a real headless Chromium: it loads without console errors and every image decodes.

Needs the Debian package `chromium`. To refresh the example screenshot in docs/:
    SELPRUNE_UPDATE_SCREENSHOT=1 python -m pytest tests/test_report_browser.py
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from selprune.config import RunConfig
from selprune.inspectdir import InspectFolder
from selprune.pruning import PrunedRecord
from selprune.report import write_report
from selprune.rundir import RunFolder

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs headless Chromium: apt-get install chromium")

LAYERS, NEURONS, STEPS, FRACTION = 30, 1536, 25, 0.02


def realistic_run(write_run, path, name, group, scorer, forget_drop, retain_drop, layer_profile, seed):
    """A run shaped like SmolLM2-135M (code ~63% top-1, prose ~33%) pruned 25 x 2%.
    forget_drop / retain_drop map the fraction pruned to a relative drop in %; layer_profile gives
    the layer weights of the pruned neurons."""
    rng = np.random.default_rng(seed)
    config = RunConfig(name=name, model="smollm2-135m", forget="code", retain="prose", group=group, scorer=scorer,
                       steps=STEPS, fraction=FRACTION)
    per_step = int(FRACTION * LAYERS * NEURONS)
    rows, steps = [], []
    for step in range(STEPS + 1):
        fraction = step * FRACTION
        for role, base, base_loss, drop in (("forget", 0.63, 1.2, forget_drop), ("retain", 0.33, 3.1, retain_drop)):
            rel = float(min(99.0, max(0.0, drop(fraction) + (rng.normal(0, 0.7) if step else 0))))  # plain: CSV takes repr(), np.float64(...) in numpy 2
            top1 = base * (1 - rel / 100)
            loss = base_loss + 4 * rel / 100
            rows.append({"step": step, "fraction_pruned": fraction, "units_pruned": step * per_step, "role": role,
                         "dataset": "code" if role == "forget" else "prose", "tokens": 100000, "top1": top1,
                         "top10": min(1, top1 + 0.25), "loss": loss, "perplexity": float(np.exp(loss)),
                         "top1_skip": top1 * 0.8, "top1_drop_rel": rel, "top1_drop_abs": 100 * (base - top1)})
        if step:
            weights = layer_profile(np.arange(LAYERS), step)
            counts = rng.multinomial(per_step, weights / weights.sum())
            pruned = {str(layer): sorted(rng.choice(NEURONS, c, replace=False).tolist())
                      for layer, c in enumerate(counts) if c}
            steps.append({"step": step, "pruned": pruned})
    return write_run(path, config, rows, PrunedRecord(group, LAYERS, NEURONS, steps))


INSPECTED_SETS = (("forget", "code", "code", "base perplexity"), ("retain", "prose", "text", "same language"),
                  ("python", "python", "python", "python parses"))


def inspected(run_dir, steps=(2, 5)):
    """RUN/inspect/ as selprune inspect writes it, with texts a page must escape (markup, quotes, a script)."""
    checks, lens, records = [], [], []
    for step in (0, *steps):
        for name, dataset, kind, check in INSPECTED_SETS:
            value = 1 / (1 + step)
            checks.append({"set": name, "dataset": dataset, "decoding": "greedy", "step": step, "check": check,
                           "about": f"what {check} means <i>", "value": value, "samples": 8})
            records.append({"set": name, "dataset": dataset, "kind": kind, "decoding": "greedy", "step": step,
                            "index": 0, "prompt": 'def f(x):\n    """Return x < 1 & "y"."""\n',
                            "continuation": f"    return x < 1  # step {step}\n<script>alert(1)</script>",
                            "verdicts": {check: value}})
        for role, top in (("forget", 0.6), ("retain", 0.35)):
            kept = 1 - (0.15 if role == "forget" else 0.03) * step  # pruning shows in the last third only
            lens += [{"step": step, "role": role, "dataset": "code" if role == "forget" else "prose", "layer": layer,
                      "top1": top * (layer / LAYERS) ** 3 * (kept if layer > 20 else 1), "positions": 1024}
                     for layer in range(1, LAYERS + 1)]
    InspectFolder(RunFolder(run_dir)).write("step = [2, 5]\n", records, {"checks.csv": checks, "lens.csv": lens})
    return run_dir


@pytest.fixture(scope="module")
def report(tmp_path_factory, write_run):
    root = tmp_path_factory.mktemp("runs")
    runs = [
        inspected(realistic_run(write_run, root / "ff-abs", "ff-abs", "ff", "abs",
                      lambda f: 92 * (1 - np.exp(-f / 0.1)), lambda f: 45 * (f / 0.5) ** 2,
                      lambda layer, step: np.exp(-((layer - 22 + step / 5) / 4) ** 2) + 0.05, seed=1)),
        realistic_run(write_run, root / "attn-value-abs", "attn-value-abs", "attn-value", "abs",
                      lambda f: 70 * (1 - np.exp(-f / 0.2)), lambda f: 35 * (f / 0.5) ** 1.5,
                      lambda layer, step: np.exp(-((layer - 8) / 6) ** 2) + 0.2, seed=2),
        realistic_run(write_run, root / "ff-random", "ff-random", "ff", "random",
                      lambda f: 55 * (f / 0.5) ** 1.5, lambda f: 60 * (f / 0.5) ** 1.5,
                      lambda layer, step: np.ones_like(layer, dtype=float), seed=3),
    ]
    return write_report(runs, root / "report")


def chromium(*args, user_data_dir):
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         f"--user-data-dir={user_data_dir}", "--enable-logging=stderr", "--v=0", *args],
        capture_output=True, text=True, timeout=120,
    )


# Injected at the top of <head> of a copy of the report (the report itself has no script): records every
# error event (failed resources included) and, on load, how many images decoded.
CHECK = """<script>
var selpruneErrors = [];
window.addEventListener("error", function (e) {
  selpruneErrors.push(String(e.message || (e.target && (e.target.src || e.target.href)) || e));
}, true);
window.addEventListener("load", function () {
  var images = Array.from(document.images);
  var out = document.createElement("pre");
  out.id = "selprune-check";
  out.textContent = JSON.stringify({
    images: images.length,
    decoded: images.filter(function (img) { return img.complete && img.naturalWidth > 0; }).length,
    errors: selpruneErrors,
  });
  document.body.appendChild(out);
});
</script>"""


def test_report_loads_cleanly_and_every_image_decodes(report, tmp_path):
    page = report.read_text()
    assert "<script" not in page  # the check below is ours, not the page's (the inspection's texts are escaped)
    assert "What the model can still do after pruning or unlearning" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("<head>", "<head>" + CHECK, 1))

    result = chromium("--dump-dom", checked.as_uri(), user_data_dir=tmp_path / "profile")
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    found = re.search(r'<pre id="selprune-check">(.*?)</pre>', result.stdout, re.S)
    assert found, "the load handler never ran: " + result.stdout[-500:]
    check = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert check["errors"] == []
    assert check["images"] == 7  # three overlay plots + one heatmap per run + the inspected run's logit lens
    assert check["decoded"] == check["images"]


def test_screenshot(report, tmp_path):
    shot = tmp_path / "report.png"
    result = chromium(f"--screenshot={shot}", "--window-size=1200,2400", report.as_uri(),
                      user_data_dir=tmp_path / "profile")
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.read_bytes().startswith(b"\x89PNG")
    if os.environ.get("SELPRUNE_UPDATE_SCREENSHOT"):
        shutil.copyfile(shot, Path(__file__).parents[1] / "docs" / "report-example.png")
