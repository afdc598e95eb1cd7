"""The report: PNG plots, and the HTML dashboard opened in headless Chromium.

Chromium (Debian's package; scripts/ensure-chromium.sh installs it) is driven over the
DevTools protocol on a pipe (--remote-debugging-pipe: JSON messages separated by NUL
bytes on file descriptors 3 and 4), so no extra Python package is needed. The tests
collect console errors, uncaught exceptions and JavaScript dialogs, read the rendered
DOM text, and save screenshots of the overview and of a feature page.
"""

from __future__ import annotations

import json
import math
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from test_interpret import toy_corpus, toy_model, toy_sae

from saekit.evaluation.splice import evaluate_in_model
from saekit.interpret import FeatureStats, collect_feature_stats
from saekit.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/ensure-chromium.sh)")

# Corpus text that would run code if the dashboard ever treated it as HTML.
SCRIPT = "<script>alert(1)</script>"
IMG = '<img src=x onerror="window.__pwned=1">'


class ToyTokenizer:
    """Token 5 decodes to a script tag, token 7 to an image with an onerror handler."""

    all_special_ids = [0, 1]

    def decode(self, ids):
        names = {0: "<bos>", 1: "<sep>", 5: SCRIPT, 7: IMG, 9: "\n"}
        return "".join(names.get(i, f" w{i}") for i in ids)


# ---- a minimal DevTools-protocol client ------------------------------------------------------


class Chromium:
    """Headless Chromium with the DevTools protocol on a pipe."""

    def __init__(self, user_data_dir: Path) -> None:
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-extensions",
            f"--user-data-dir={user_data_dir}",
            "--remote-debugging-pipe",
        ]
        # fd 3: what Chromium reads (our stdin pipe); fd 4: what it writes (our stdout pipe).
        self.process = subprocess.Popen(
            ["sh", "-c", 'exec "$@" 3<&0 4>&1 0</dev/null 1>/dev/null', "sh", CHROMIUM, *flags],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.process.stdin.write(json.dumps(message).encode() + b"\0")
        self.process.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, session: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == method and event.get("sessionId") == session:
                    self.events.remove(event)
                    return event
            self.events.append(self._receive(deadline))

    def _receive(self, deadline: float) -> dict:
        fd = self.process.stdout.fileno()
        while b"\0" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium exited")
                self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, BrokenPipeError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Page:
    """One tab: navigate, evaluate JavaScript, screenshot; problems are collected."""

    def __init__(self, browser: Chromium, width: int = 1280, height: int = 1500) -> None:
        self.browser = browser
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session=self.session)
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=self.session,
        )

    def goto(self, url: str) -> None:
        self.browser.send("Page.navigate", {"url": url}, session=self.session)
        self.browser.wait_for("Page.loadEventFired", self.session)

    def evaluate(self, expression: str):
        result = self.browser.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=self.session
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_until(self, expression: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page never satisfied {expression}; it shows: {self.text()[:500]!r}")
            time.sleep(0.05)

    def text(self) -> str:
        return self.evaluate("document.body.innerText")

    def screenshot(self, path: Path) -> Path:
        data = self.browser.send("Page.captureScreenshot", {"format": "png"}, session=self.session)["data"]
        import base64

        path.write_bytes(base64.b64decode(data))
        return path

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, failed loads, dialogs."""
        found = []
        for event in self.browser.events:
            if event.get("sessionId") != self.session:
                continue
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails']}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
                found.append(f"console.{params['type']}: {params.get('args')}")
            elif method == "Log.entryAdded" and params["entry"].get("level") in ("error", "warning"):
                found.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
            elif method == "Page.javascriptDialogOpening":
                found.append(f"dialog: {params.get('message')}")
        return found


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (scripts/ensure-chromium.sh)")
    chromium = Chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield chromium
    finally:
        chromium.close()


def assert_real_png(path: Path, width: int) -> None:
    from matplotlib.image import imread

    image = imread(path)
    assert image.shape[1] == width and image.shape[0] > 200
    colours = len(set(map(tuple, (image[..., :3].reshape(-1, 3) * 255).astype(int)[::97].tolist())))
    assert colours > 20, f"{path} looks blank ({colours} colours)"


def read_shard(path: Path) -> dict:
    """The data a shard file passes to saekitShard(index, data)."""
    text = path.read_text()
    return json.loads(text[text.index(", ", text.index("saekitShard(")) + 2 : text.rindex(");")])


# ---- the toy report -------------------------------------------------------------------------


TOY_METRICS = {
    "model": "toy",
    "hook": "layers.0.resid_pre",
    "ce_clean": 2.0,
    "ce_sae": 2.2,
    "ce_zero_ablation": 5.0,
    "ce_mean_ablation": 3.1,
    "loss_recovered": 0.9333,
    "loss_recovered_mean_ablation": 0.8182,
    "delta_lm_loss": 0.2,
    "kl_div": 0.15,
    "l0": 2.3,
    "fvu": 0.1,
    "explained_variance": 0.9,
    "dead_fraction": 0.25,
    "n_tokens": 27,
}


@pytest.fixture(scope="module")
def toy_report(tmp_path_factory):
    stats = collect_feature_stats(
        toy_sae(), toy_model(), toy_corpus(), n_top=4, n_random=2, window=(2, 1), batch_contexts=2, progress=False
    )
    out = tmp_path_factory.mktemp("report")
    return write_report(out, toy_sae(), stats, TOY_METRICS, ToyTokenizer(), shard_size=2), stats


def test_report_files_and_plots(toy_report):
    index, _ = toy_report
    folder = index.parent
    assert index.name == "index.html" and (folder / "feature.html").is_file()
    assert sorted(p.name for p in (folder / "data").iterdir()) == ["shard-0000.js", "shard-0001.js"]
    for name in ("feature_density", "l0_histogram", "loss_comparison", "frequency_vs_activation"):
        png = folder / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, name
        assert f'src="plots/{name}.png"' in index.read_text()


def test_corpus_text_is_never_markup_in_the_files(toy_report):
    index, _ = toy_report
    for path in [index, index.parent / "feature.html", *(index.parent / "data").iterdir()]:
        text = path.read_text()
        assert "<script>alert" not in text and "<img src=x" not in text, path
    assert "\\u003cscript\\u003ealert(1)\\u003c/script\\u003e" in (index.parent / "data" / "shard-0000.js").read_text()


@needs_chromium
def test_dashboard_renders_in_chromium_without_errors(toy_report, browser, tmp_path):
    index, stats = toy_report
    page = Page(browser)
    page.goto(index.as_uri())
    page.wait_until("document.querySelectorAll('#feature-table tbody tr').length > 0")
    text = page.text()
    for expected in ("loss recovered", "0.9333", "Feature density", "#0", "#1", "#3", SCRIPT, IMG):
        assert expected in text, expected
    assert "#2" not in text.split("Features")[-1]  # the dead feature is hidden by default
    shot = page.screenshot(tmp_path / "overview.png")
    assert_real_png(shot, 1280)

    # Search by a top token: only feature 1 (which fires on the <img> token) remains.
    page.evaluate(
        "const s = document.getElementById('search'); s.value = 'onerror'; s.dispatchEvent(new Event('input')); true"
    )
    links = page.evaluate("[...document.querySelectorAll('#feature-table tbody a')].map(a => a.textContent)")
    assert links == ["#1"]
    page.evaluate(
        "const t = document.getElementById('search'); t.value = '#3'; t.dispatchEvent(new Event('input')); true"
    )
    assert page.evaluate("[...document.querySelectorAll('#feature-table tbody a')].map(a => a.textContent)") == ["#3"]

    # A feature page: contexts coloured by activation, with the value on hover.
    page.goto((index.parent / "feature.html").as_uri() + "#0")
    page.wait_until("document.querySelector('#feature h1')?.textContent === 'Feature 0'")
    text = page.text()
    for expected in ("Top activations", "activation quantile", "Promotes", "Suppresses", "firing frequency"):
        assert expected.lower() in text.lower(), expected  # headings are upper-cased by CSS
    assert SCRIPT in text
    centres = page.evaluate(
        "[...document.querySelectorAll('.ctx span.centre')].map(s => [s.textContent, s.title, s.style.backgroundColor])"
    )
    # The top examples, then the quantile groups of top ∪ random (feature 0 fired 4 times:
    # its 2 random examples are among its 4 top ones, each shown once in the groups).
    kept = {(e.context, e.position) for e in stats.top.of(0) + stats.random.of(0)}
    assert len(kept) == 4 and len(centres) == len(stats.top.of(0)) + len(kept)
    assert all(
        text == SCRIPT and "activation 1.5" in title and "255, 120, 20" in colour for text, title, colour in centres
    )
    assert page.evaluate("document.querySelectorAll('.histogram rect.bar').length") >= 1
    shot = page.screenshot(tmp_path / "feature.png")
    assert_real_png(shot, 1280)

    # Navigation loads the next shard on demand (shard_size=2: feature 2 is in shard 1).
    page.evaluate("document.getElementById('next-feature').click(); true")
    page.wait_until("document.querySelector('#feature h1')?.textContent === 'Feature 1'")
    assert IMG in page.text()
    page.evaluate("location.hash = '#2'; true")
    page.wait_until("document.querySelector('#feature h1')?.textContent === 'Feature 2 (dead)'")

    # Nothing from the corpus ran: no dialog, no handler, only the dashboard's own scripts.
    assert page.evaluate("window.__pwned === undefined")
    assert page.evaluate(
        "[...document.scripts].every(s => s.type === 'application/json' || "
        "/assets\\/feature\\.js$|data\\/shard-\\d{4}\\.js$/.test(s.src))"
    )
    assert page.problems() == []
    _keep_screenshots(tmp_path)


def _keep_screenshots(folder: Path) -> None:
    """Copy screenshots to $SAEKIT_SCREENSHOTS, when set, for a person to look at."""
    target = os.environ.get("SAEKIT_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for png in folder.glob("*.png"):
            shutil.copy(png, Path(target) / png.name)


def test_report_checks_its_inputs(toy_report, tmp_path):
    _, stats = toy_report
    import saekit

    with pytest.raises(ValueError, match="4 features"):
        write_report(tmp_path, saekit.create("topk", d_in=16, d_sae=8, k=2), stats)


def test_report_without_metrics_or_tokenizer_and_a_subset_of_features(toy_report, tmp_path):
    _, stats = toy_report
    index = write_report(tmp_path, toy_sae(), stats, None, None, n_features=2)
    html = index.read_text()
    assert "saekit evaluate" in html and "features in this report" in html
    assert not (tmp_path / "plots" / "loss_comparison.png").exists()
    shard = (tmp_path / "data" / "shard-0000.js").read_text()
    assert "\\u27e85\\u27e9" in shard or "⟨5⟩" in shard  # tokens shown by id
    assert sorted(read_shard(tmp_path / "data" / "shard-0000.js")["features"]) == ["0", "1"]  # only features 0 and 1


# ---- the embedded model, end to end -----------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    from saekit.data.model import load_model

    return load_model()


@pytest.mark.slow
@needs_chromium
def test_dashboard_of_smollm2_features(smollm2, browser, tmp_path):
    """Real tokenizer, real model: corpus HTML shows as text; feature pages show corpus contexts."""
    import saekit
    from saekit.data.corpus import Document, tokenize

    text = (
        "ROMEO. But soft, what light through yonder window breaks? It is the east, and Juliet is the sun. "
        f"Arise, fair sun, and kill the envious moon. {SCRIPT} <b>bold</b> & more. " * 3
    )
    corpus = tokenize([Document(text, "test")], smollm2.tokenizer, 48, max_contexts=3)
    sae = saekit.create("topk", d_in=smollm2.d_model, d_sae=32, k=4, seed=0).eval()
    sae.cfg.hook = "layers.15.resid_post"
    stats = collect_feature_stats(sae, smollm2, corpus, n_top=5, n_random=3, window=(10, 3), progress=False)
    metrics = evaluate_in_model(sae, smollm2, corpus, batch_contexts=3, progress=False)
    index = write_report(tmp_path / "report", sae, stats, metrics, smollm2.tokenizer)
    assert FeatureStats.load(stats.save(tmp_path / "features")).n_tokens == stats.n_tokens

    page = Page(browser)
    page.goto(index.as_uri())
    page.wait_until("document.querySelectorAll('#feature-table tbody tr').length > 0")
    assert "layers.15.resid_post" in page.text() and "CE clean" in page.text()
    page.screenshot(tmp_path / "smollm2-overview.png")
    busiest = int(stats.count.argmax())
    page.goto((index.parent / "feature.html").as_uri() + f"#{busiest}")
    page.wait_until(f"document.querySelector('#feature h1')?.textContent?.startsWith('Feature {busiest}')")
    contexts = page.evaluate("[...document.querySelectorAll('.ctx')].map(c => c.textContent).join('\\n')")
    assert any(word in contexts for word in ("Juliet", "window", "sun", "moon", "script", "bold"))
    all_contexts = page.evaluate("[...document.querySelectorAll('.ctx')].length")
    kept = {(e.context, e.position) for e in stats.top.of(busiest) + stats.random.of(busiest)}
    assert all_contexts == len(stats.top.of(busiest)) + len(kept)  # top, then the quantile groups of top ∪ random
    assert_real_png(page.screenshot(tmp_path / "smollm2-feature.png"), 1280)
    # Corpus text (which holds <script>, <b>) is text inside the contexts, never elements.
    assert page.evaluate("document.querySelectorAll('.ctx script, .ctx img, .ctx b').length") == 0
    assert page.evaluate("document.querySelectorAll('.ctx *').length") > 0  # the selector does reach the contexts
    assert page.problems() == []
    _keep_screenshots(tmp_path)


# ---- dashboard parity: quantile groups, logit-weight histogram, neighbours, explanations, steering ----

# Text from other stages that would run or render as markup if it were ever treated as HTML.
EXPLAINED = "the token <script>window.__pwned=1</script> &amp; its <b>friends</b>"
STEERED = "<script>window.__pwned=2</script> kings &amp; queens"


def planted_sae():
    """The toy SAE with feature 2 reading e_5 like feature 0: the two always fire together."""
    sae = toy_sae()
    with torch.no_grad():
        sae.W_enc[:, 2] = torch.eye(sae.d_in)[5]
        sae.b_enc[2] = 0.0
    return sae


def write_run_fixtures(run: Path) -> None:
    """explanations.jsonl and steering.json in the fixed formats of the explain and steering stages."""
    features = run / "features"
    lines = [
        {
            "feature": 0,
            "explanation": EXPLAINED,
            "explainer": "local:test",
            "detection": 0.9,
            "fuzzing": 0.7,
            "n_detection": 40,
            "n_fuzzing": 40,
            "settings": {},
        },
        {
            "feature": 1,
            "explanation": "image tags",
            "explainer": "local:test",
            "detection": 0.6,
            "fuzzing": None,
            "n_detection": 40,
            "n_fuzzing": 0,
            "settings": {},
        },
        {
            "feature": 3,
            "explanation": "every token",
            "explainer": "local:test",
            "detection": 0.5,
            "fuzzing": 0.55,
            "n_detection": 40,
            "n_fuzzing": 40,
            "settings": {},
        },
        {
            "feature": 1,
            "explanation": "image tags, explained again",
            "explainer": "local:test",
            "detection": 0.65,
            "fuzzing": None,
            "n_detection": 40,
            "n_fuzzing": 0,
            "settings": {},
        },
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines) + '{"feature": 2, "explan'  # being written
    (features / "explanations.jsonl").write_text(text)
    steering = {
        "hook": "layers.0.resid_pre",
        "prompts": ["Once upon <b>a</b> time", "x &amp; y"],
        "strengths": [4.0, 8.0],
        "max_new_tokens": 8,
        "unsteered": [" there was a", " z"],
        "features": {
            "0": [
                {"prompt": 0, "strength": 8.0, "text": STEERED},
                {"prompt": 0, "strength": 4.0, "text": " kings\n\n\n"},
                {"prompt": 1, "strength": 4.0, "text": " w5\nw5"},
            ]
        },
    }
    (features / "steering.json").write_text(json.dumps(steering))


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    """A run folder as saekit lays it out: store/ (harvested from the toy model), features/
    with the two fixture files, and the report written into RUN/report."""
    from saekit.data.harvest import harvest

    run = tmp_path_factory.mktemp("run")
    (run / "saekit.json").write_text(json.dumps({"format": "saekit-folder", "version": 1, "kind": "run"}))
    loaded, sae = toy_model(), planted_sae()
    harvest(loaded, toy_corpus(), "layers.0.resid_pre", run / "store", dtype="float32", progress=False)
    stats = collect_feature_stats(
        sae, loaded, toy_corpus(), n_top=4, n_random=3, window=(2, 1), batch_contexts=2, progress=False
    )
    stats.save(run / "features")
    write_run_fixtures(run)
    index = write_report(run / "report", sae, stats, TOY_METRICS, ToyTokenizer(), loaded=loaded, shard_size=2)
    return index, stats


def test_parity_data_in_the_shards(planted_run):
    index, stats = planted_run
    data = read_shard(index.parent / "data" / "shard-0000.js")
    f0 = data["features"]["0"]
    # 27 stored tokens; feature 2 fires exactly where feature 0 does, feature 3 everywhere.
    assert f0["co_firing"] == [[2, 1.0, 1.0], [3, float(f"{4 / 27:.4g}"), 1.0]] and f0["co_firing_count"] == 4
    assert [n for n, _ in f0["decoder"]] and all(n != 0 for n, _ in f0["decoder"])
    low, high, counts = f0["logit_hist"]
    assert sum(counts) == 16 and counts[0] == 1 and counts[-1] == 1 and high > 0 > low
    assert f0["explanation"]["text"] == EXPLAINED and f0["explanation"]["detection"] == 0.9
    assert data["features"]["1"]["explanation"]["text"] == "image tags, explained again"  # the last line wins
    assert [row[1] for row in f0["steering"]] == [4.0, 8.0, 4.0]  # by prompt, then strength
    # The quantile groups cover top ∪ random of feature 3 once each, in order, inside their ranges.
    f3 = read_shard(index.parent / "data" / "shard-0001.js")["features"]["3"]
    pool = f3["top"] + f3["random"]
    members = [i for g in f3["groups"] for i in g["members"]]
    unique = {(e[1], e[2]) for e in pool}
    assert len(members) == len(set(members)) == len(unique)
    values = [pool[i][0] for i in members]
    assert values == sorted(values, reverse=True)
    for g in f3["groups"]:
        assert all(g["range"][0] * (1 - 1e-3) <= pool[i][0] <= g["range"][1] * (1 + 1e-3) for i in g["members"])
    assert [g["q"] for g in f3["groups"]][0] == [0.99, 1.0] and f3["groups"][-1]["q"] == [0.0, 0.5]
    for path in index.parent.rglob("*.js"):  # other stages' text is data in the files too
        assert "<script>window" not in path.read_text() and "<b>friends" not in path.read_text(), path


@needs_chromium
def test_parity_sections_in_chromium(planted_run, browser, tmp_path):
    index, stats = planted_run
    page = Page(browser)
    page.goto((index.parent / "feature.html").as_uri() + "#0")
    page.wait_until("document.querySelector('#feature h1')?.textContent === 'Feature 0'")
    text = page.text()
    # The explanation and its scores, exactly as written: text, not markup.
    assert page.evaluate("document.querySelector('.explanation-text').textContent") == EXPLAINED
    assert "0.90 (n = 40)" in text and "0.70 (n = 40)" in text and "local:test" in text
    # Co-firing: feature 2 at 1.00 share and Jaccard, linked to its page; then feature 3.
    rows = page.evaluate(
        "[...document.querySelectorAll('.co-firing table.nb tr')].slice(1).map(tr => ["
        "tr.querySelector('a')?.getAttribute('href'), "
        "...[...tr.querySelectorAll('td.num')].map(td => td.textContent)])"
    )
    assert rows == [["feature.html#2", "1.00", "1.00"], ["feature.html#3", "1.00", "0.15"]]
    assert page.evaluate("document.querySelectorAll('.decoder table.nb a').length") == 3
    # The logit-weight histogram: 40 bars, three of them non-empty (tokens 5, 9, and the rest).
    bars = page.evaluate(
        "[...document.querySelectorAll('.logit-histogram rect.bar')].map(r => +r.getAttribute('height'))"
    )
    assert len(bars) == 40 and sum(h > 0 for h in bars) == 3
    # Steering beside the unsteered continuation, corpus-like text shown as text.
    steer = page.evaluate(
        "[...document.querySelectorAll('.steering .steer-prompt')].map(b => ["
        "b.querySelector('.prompt').textContent, [...b.querySelectorAll('tr')].map(tr => "
        "[tr.querySelector('th').textContent, tr.querySelector('td').textContent])])"
    )
    assert steer == [
        [
            "Once upon <b>a</b> time",
            [["unsteered", " there was a"], ["s = +4", " kings\u21b5\u21b5\u21b5\n"], ["s = +8", STEERED]],
        ],
        ["x &amp; y", [["unsteered", " z"], ["s = +4", " w5\u21b5\nw5"]]],
    ]
    # Quantile groups in the page: group heads from the top quantile down, examples in order.
    heads = page.evaluate("[...document.querySelectorAll('.quantile-groups .group-head b')].map(b => b.textContent)")
    assert heads == [
        "quantile 0.99\u20131",
        "quantile 0.9\u20130.99",
        "quantile 0.75\u20130.9",
        "quantile 0.5\u20130.75",
        "quantile 0\u20130.5",
    ]
    assert (
        page.evaluate("document.querySelectorAll('.explanation-text *, .steering .prompt *, .steering td *').length")
        == 0
    )
    assert page.evaluate("document.querySelectorAll('#feature script').length") == 0
    assert_real_png(page.screenshot(tmp_path / "feature-parity.png"), 1280)
    # Following the co-firing link opens feature 2's page, which links back to 0.
    page.evaluate("document.querySelector('.co-firing a').click(); true")
    page.wait_until("document.querySelector('#feature h1')?.textContent === 'Feature 2'")
    assert page.evaluate("document.querySelector('.co-firing a').getAttribute('href')") == "feature.html#0"
    assert page.evaluate("document.querySelectorAll('.explanation, .steering').length") == 0  # optional parts
    assert page.evaluate("window.__pwned === undefined")
    assert page.problems() == []

    # The index: explanation column, search by explanation text, sort by the scores.
    page = Page(browser)
    page.goto(index.as_uri())
    page.wait_until("document.querySelectorAll('#feature-table tbody tr').length > 0")

    def ids():
        return page.evaluate("[...document.querySelectorAll('#feature-table tbody a')].map(a => a.textContent)")

    def search(query):
        page.evaluate(
            f"(s => {{ s.value = {json.dumps(query)}; s.dispatchEvent(new Event('input')); }})"
            "(document.getElementById('search')); true"
        )

    assert EXPLAINED in page.text()
    search("explained again")
    assert ids() == ["#1"]
    search("&amp; its")
    assert ids() == ["#0"]
    search("")
    page.evaluate("document.querySelector('th[data-key=detection]').click(); true")  # best first
    assert ids() == ["#0", "#1", "#3", "#2"]  # feature 2 has no explanation: last
    page.evaluate("document.querySelector('th[data-key=detection]').click(); true")  # worst first
    assert ids() == ["#3", "#1", "#0", "#2"]  # still last
    page.evaluate("document.querySelector('th[data-key=fuzzing]').click(); true")
    assert ids() == ["#0", "#3", "#1", "#2"]  # feature 1 has no fuzzing score
    assert_real_png(page.screenshot(tmp_path / "overview-parity.png"), 1280)
    assert page.evaluate("window.__pwned === undefined")
    assert page.problems() == []
    _keep_screenshots(tmp_path)


def test_damaged_fixture_files_are_refused_in_one_line(tmp_path):
    from saekit._runtime.errors import DataError
    from saekit.report.annotations import read_explanations, read_steering

    path = tmp_path / "explanations.jsonl"
    assert read_explanations(path, 4) == {} and read_steering(tmp_path / "steering.json", 4) is None
    cases = [
        ('{"feature": 1, "explanation": "a"}\nnot json\n{"feature": 2, "explanation": "b"}\n', "line 2, is not JSON"),
        ('{"feature": 9, "explanation": "a"}\n', "feature 9 is not a feature id of this SAE"),
        ('{"feature": 1, "explanation": "a", "detection": 1.5}\n', "detection must be a number in"),
        ('{"feature": 1, "explanation": 3}\n', "explanation must be a string"),
    ]
    for text, message in cases:
        path.write_text(text)
        with pytest.raises(DataError, match=message) as error:
            read_explanations(path, 4)
        assert "\n" not in str(error.value) and "saekit explain" in str(error.value)
    steering = tmp_path / "steering.json"
    good = {"hook": "h", "prompts": ["p"], "strengths": [1.0], "max_new_tokens": 4, "unsteered": ["u"], "features": {}}
    for change, message in [
        ({"unsteered": []}, "one string per prompt"),
        ({"features": {"7": []}}, "feature '7' is not a feature id"),
        ({"features": {"1": [{"prompt": 3, "strength": 1.0, "text": "t"}]}}, "prompt index"),
    ]:
        steering.write_text(json.dumps({**good, **change}))
        with pytest.raises(DataError, match=message):
            read_steering(steering, 4)
    steering.write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        read_steering(steering, 4)


def test_quantile_edges_and_groups_from_a_known_histogram():
    from saekit.report.groups import quantile_at, quantile_groups, quantile_values

    edges = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0], dtype=torch.float64)
    counts = torch.tensor([10, 10, 10, 10])  # a quarter of the firings in each doubling
    values = quantile_values(edges, counts, 15.0, (0.0, 0.5, 0.75, 0.9, 1.0))
    assert values[:3] == [0.0, 4.0, 8.0] and values[4] == 15.0
    assert math.isclose(values[3], 8 * 2**0.6)  # 0.9: 60% of the way through the last bin, log-linearly
    for q in (0.1, 0.5, 0.62, 0.9):  # quantile_at is its inverse
        assert math.isclose(quantile_at(edges, counts, quantile_values(edges, counts, 15.0, (q,))[0]), q)
    examples = [(0, 14.0), (1, 1.5), (2, 9.0), (3, 8.0), (4, 3.0), (5, 12.5), (6, 0.5)]
    groups = quantile_groups(examples, edges, counts, 15.0, (0.0, 0.5, 0.75, 0.9, 1.0))
    assert [g["q"] for g in groups] == [[0.9, 1.0], [0.75, 0.9], [0.5, 0.75], [0.0, 0.5]]
    assert [g["members"] for g in groups] == [[0, 5], [2, 3], [], [4, 1, 6]]  # 8.0 = v(0.75) opens its group
    empty = quantile_groups([], edges, torch.zeros(4, dtype=torch.int64), 0.0)
    assert all(g["members"] == [] and g["range"] == [0.0, 0.0] for g in empty)


def test_a_damaged_explanations_file_stops_the_report_in_one_line(planted_run, tmp_path):
    """The run's report stage reads RUN/features; a damaged file is named, with the fix."""
    from saekit._runtime.errors import SaekitError

    index, stats = planted_run
    run = tmp_path / "run"
    shutil.copytree(index.parent.parent, run, ignore=shutil.ignore_patterns("report"))
    (run / "features" / "explanations.jsonl").write_text('{"feature": 0, "explanation": "a"}\n{oops}\n\n')
    with pytest.raises(SaekitError, match=r"explanations.jsonl, line 2, is not JSON; run `saekit explain` again"):
        write_report(run / "report", planted_sae(), stats, None, ToyTokenizer())
    assert not (run / "report" / "index.html").exists()


def test_co_firing_sample_and_what_is_left_out(planted_run, tmp_path):
    from saekit.report.extras import gather_extras

    index, _ = planted_run
    run = index.parent.parent
    sample = gather_extras(planted_sae(), range(4), run=run, co_firing_tokens=10)
    assert sample.co_firing.n_tokens == 10 and sample.notes == [
        "The logit-weight histograms need the model (the report was written without it)."
    ]
    other = planted_sae()
    other.cfg.hook = "layers.0.resid_post"  # not what the store holds: no co-firing from it
    mismatch = gather_extras(other, range(4), run=run)
    assert mismatch.co_firing is None and "the store holds layers.0.resid_pre" in mismatch.notes[0]
    (tmp_path / "features").mkdir()
    bare = gather_extras(planted_sae(), range(4), run=tmp_path)
    assert bare.co_firing is None and "does not have" in bare.notes[0]
    assert bare.explanations == {} and bare.steering is None and bare.decoder is not None
