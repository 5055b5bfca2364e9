"""Check the run folder the README's main job (`dynametric train`) wrote, as CI does after running it.

    python .ci/check_main_job.py RUN_DIR [--out DIR] [--no-browser]

1. ``metrics.json`` holds ``untrained`` and ``test`` results for the same scales, and at every scale the trained
   model's test ``map@r`` and ``recall@1`` are above the untrained model's.
2. ``report.html`` renders in headless Chromium: the rendered DOM (``--dump-dom``) holds every section heading of
   the report, a metrics row per scale, and inline plots that the browser decoded; a screenshot of the page
   (``--screenshot``, the whole page) is a PNG of the requested size that is not blank.

Writes only under ``--out`` (default: ``ci-check`` next to the run folder's parent): the screenshot, the dumped
DOM and a probe copy of the report. Exits 1 with one line per failed check. ``--no-browser`` runs only the
``metrics.json`` check (for tests on machines without Chromium; CI never passes it).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.browser import INSTALL_HINT, find_chromium, run_headless  # noqa: E402

METRICS = ("map@r", "recall@1")
# the sections every run's report has; "Worst queries" and "Per category" (only with query categories, which the
# main job's synthetic data has none of) are not required
SECTIONS = ("Test metrics", "Training curves", "Per-scale test metrics", "Embedding map", "Retrieval gallery",
            "Multi-scale retrieval", "Resolved configuration")
MIN_PLOTS = 5  # training curves, per-scale bars, embedding map, retrieval gallery, multi-scale retrieval
WIDTH, MAX_HEIGHT = 1280, 16000  # the screenshot is the whole page (its height is measured first), capped
# Appended to a copy of the report: once the page has loaded, record how many <img> the browser decoded and how
# tall the page is.
PROBE = """<script>window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0).length;
  const p = document.createElement("div"); p.id = "ci-probe";
  p.setAttribute("data-images", imgs.length); p.setAttribute("data-decoded", ok);
  p.setAttribute("data-height", document.documentElement.scrollHeight);
  document.body.appendChild(p);
});</script>"""


class _Headings(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.cells: list[str] = []
        self._tag: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("h1", "h2", "td", "th"):
            self._tag = tag
            (self.headings if tag in ("h1", "h2") else self.cells).append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == self._tag:
            self._tag = None

    def handle_data(self, data: str) -> None:
        if self._tag in ("h1", "h2"):
            self.headings[-1] += data
        elif self._tag in ("td", "th"):
            self.cells[-1] += data


def check_metrics(run: Path) -> tuple[list[str], list[str]]:
    """(problems, table lines) for ``run/metrics.json``."""
    path = run / "metrics.json"
    if not path.is_file():
        return [f"{path}: missing"], []
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        return [f"{path}: not valid JSON ({e})"], []
    problems: list[str] = []
    untrained, test = data.get("untrained"), data.get("test")
    if not isinstance(untrained, dict) or not isinstance(test, dict):
        return [f"{path}: expected objects under 'untrained' and 'test'"], []
    not_scales = ("mean", "protocol")  # the mean over scales; the evaluation protocol's description (query->gallery)
    scales = [s for s in test if s not in not_scales]
    if not scales:
        problems.append(f"{path}: 'test' holds no scale")
    if sorted(scales) != sorted(s for s in untrained if s not in not_scales):
        problems.append(f"{path}: scales differ between 'untrained' {sorted(untrained)} and 'test' {sorted(test)}")
    lines = [f"{'scale':<8}" + "".join(f"{m + ' untrained':>20}{m + ' trained':>18}" for m in METRICS)]
    for scale in scales:
        row = f"{scale:<8}"
        for m in METRICS:
            before, after = untrained.get(scale, {}).get(m), test[scale].get(m)
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (before, after)):
                problems.append(f"{path}: {scale}/{m} is not a finite number (untrained {before!r}, test {after!r})")
                row += f"{'?':>20}{'?':>18}"
                continue
            row += f"{before:>20.4f}{after:>18.4f}"
            if not after > before:
                problems.append(f"{path}: {scale}/{m} trained {after:.4f} is not above untrained {before:.4f}")
        lines.append(row)
    return problems, lines


def check_report(run: Path, out: Path, scales: list[str]) -> tuple[list[str], list[str]]:
    """(problems, notes) for ``run/report.html`` rendered in headless Chromium."""
    report = run / "report.html"
    if not report.is_file():
        return [f"{report}: missing"], []
    binary = find_chromium()
    if binary is None:
        return [f"cannot render {report}: no Chromium ({INSTALL_HINT})"], []
    problems, notes = [], []
    out.mkdir(parents=True, exist_ok=True)
    # rendered DOM of a probe copy (the run folder is left untouched)
    probe = out / "report-probe.html"
    html = report.read_text(encoding="utf-8")
    probe.write_text(html.replace("</body>", PROBE + "</body>") if "</body>" in html else html + PROBE,
                     encoding="utf-8")
    res = run_headless(["--virtual-time-budget=10000", "--dump-dom", probe.resolve().as_uri()], binary=binary)
    dom = res.stdout
    (out / "report-dom.html").write_text(dom, encoding="utf-8")
    if res.returncode != 0 or "<body" not in dom:
        return [f"chromium --dump-dom {report} failed (exit {res.returncode}): {res.stderr.strip()[-500:]}"], []
    parsed = _Headings()
    parsed.feed(dom)
    headings = [h.strip() for h in parsed.headings]
    missing = [s for s in SECTIONS if s not in headings]
    if missing:
        problems.append(f"{report}: rendered page lacks section(s) {missing} (headings: {headings})")
    cells = {c.strip() for c in parsed.cells}
    if not set(scales) <= cells:
        problems.append(f"{report}: metrics table lacks row(s) for {sorted(set(scales) - cells)}")
    m = re.search(r'id="ci-probe" data-images="(\d+)" data-decoded="(\d+)" data-height="(\d+)"', dom)
    height = 2000
    if m is None:
        problems.append(f"{report}: the load probe did not run (page did not finish loading)")
    else:
        n_img, n_ok, height = int(m.group(1)), int(m.group(2)), min(max(int(m.group(3)), 600), MAX_HEIGHT)
        notes.append(f"rendered DOM: {len(headings)} headings, {n_ok}/{n_img} plots decoded by the browser")
        if n_img < MIN_PLOTS or n_ok != n_img:
            problems.append(f"{report}: {n_ok} of {n_img} images decoded (expected all of at least {MIN_PLOTS})")
    # screenshot of the report itself
    shot = out / "report.png"
    shot.unlink(missing_ok=True)
    res = run_headless([f"--screenshot={shot.resolve()}", f"--window-size={WIDTH},{height}",
                        "--virtual-time-budget=10000", report.resolve().as_uri()], binary=binary)
    if not shot.is_file():
        problems.append(f"chromium --screenshot {report} wrote nothing (exit {res.returncode}): "
                        f"{res.stderr.strip()[-500:]}")
        return problems, notes
    from PIL import Image

    with Image.open(shot) as img:
        size, rgb = img.size, img.convert("RGB")
    colours = rgb.getcolors(maxcolors=1 << 20) or []
    background = max(colours)[0] / (size[0] * size[1]) if colours else 1.0
    notes.append(f"screenshot {shot}: {size[0]}x{size[1]}, {len(colours)} colours, "
                 f"{100 * (1 - background):.1f}% of pixels off the background colour")
    if size != (WIDTH, height):
        problems.append(f"{shot}: {size[0]}x{size[1]} pixels, expected {WIDTH}x{height}")
    if len(colours) < 64 or background > 0.97:
        problems.append(f"{shot}: looks blank ({len(colours)} colours, {100 * background:.1f}% one colour)")
    return problems, notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="the run folder `dynametric train` wrote (runs/<timestamp>-<hash>)")
    ap.add_argument("--out", type=Path, default=None, help="where the screenshot and DOM go (default: "
                    "ci-check/ in the folder the job ran in)")
    ap.add_argument("--no-browser", action="store_true", help="check metrics.json only; skip rendering report.html "
                    "(CI does not use this)")
    args = ap.parse_args(argv)
    run: Path = args.run
    out = args.out if args.out is not None else run.resolve().parent.parent / "ci-check"
    problems, table = check_metrics(run)
    for line in table:
        print(line)
    scales = [line.split()[0] for line in table[1:]]
    if args.no_browser:
        notes = ["report.html not checked (--no-browser)"]
    else:
        report_problems, notes = check_report(run, out, scales)
        problems += report_problems
    for line in notes:
        print(line)
    sys.stdout.flush()
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    if not problems and args.no_browser:
        print(f"metrics OK: every scale above the untrained model ({', '.join(METRICS)}); report.html not checked")
    elif not problems:
        print(f"main job OK: every scale above the untrained model ({', '.join(METRICS)}); report.html renders "
              f"with all {len(SECTIONS)} sections")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
