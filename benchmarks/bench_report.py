"""How long the folder report (``avemo status DIR --html``) takes to open with many inputs.

Writes a manifest of N synthetic records (each with the summary annotate stores: means,
coverage, 40-point sparklines), builds the report with ``pages.folder_report``, and opens it
in headless Chromium (tests/browser.py) from disk: the time from navigation until the first
screenful of rows is drawn and the page answers (``window.avemoPage.ready``; the rest follow in
slices between frames) and until every row is there (``complete``), medians of --repeats.

    python benchmarks/bench_report.py [--inputs 100 1000 10000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "tests"))

from browser import Browser  # noqa: E402

from avemo_cli.files import write_text  # noqa: E402
from avemo_cli.pages import folder_report  # noqa: E402
from avemo_cli.manifests import Manifest, Record, summarise  # noqa: E402


def records(n: int, folder: Path) -> None:
    rng = np.random.default_rng(0)
    manifest = Manifest(folder / "avemo-manifest.jsonl")
    for i in range(n):
        walk = np.clip(np.cumsum(rng.normal(0, 0.08, (2, 40)), axis=1), -1, 1).round(3)
        status = "failed" if i % 97 == 0 else "ok"
        summary = {} if status == "failed" else {
            "valence": float(walk[0].mean()), "arousal": float(walk[1].mean()),
            "face": float(rng.uniform(0.5, 1)), "voice": float(rng.uniform(0.3, 1)),
            "spark": {"valence": walk[0].tolist(), "arousal": walk[1].tolist()}}
        manifest.add(Record(f"recordings/session{i // 100:03d}/clip{i:05d}.mp4", status,
                            "unreadable media" if status == "failed" else "",
                            [str(folder / f"clip{i:05d}.avemo.html")], 10.0,
                            float(rng.uniform(60, 3600)), summary=summary))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"headless Chromium")
    print("| inputs | report size | build (s) | open: first rows, median (s) | all rows (s) |")
    print("| --- | --- | --- | --- | --- |")
    for n in args.inputs:
        with tempfile.TemporaryDirectory() as tmpdir:
            folder = Path(tmpdir)
            records(n, folder)
            t0 = time.perf_counter()
            page = write_text(folder / "avemo-report.html", folder_report(summarise(folder),
                                                                          folder))
            build = time.perf_counter() - t0
            first, every = [], []
            with Browser() as b:
                for _ in range(args.repeats):
                    b.open("about:blank")
                    t1 = time.perf_counter()
                    b.open(page.as_uri(), "window.avemoPage && window.avemoPage.ready")
                    first.append(time.perf_counter() - t1)
                    b.wait_for("window.avemoPage.complete", 120)
                    every.append(time.perf_counter() - t1)
                    assert b.eval("window.avemoPage.rows") == n
            print(f"| {n} | {page.stat().st_size / 1e6:.1f} MB | {build:.2f} | "
                  f"{statistics.median(first):.2f} | {statistics.median(every):.2f} |")


if __name__ == "__main__":
    main()
