#!/usr/bin/env bash
# The README's and docs' figures, made by the project's own commands from the bundled sample and
# the shipped default model: the valence plot, one still of the attention overlay, the sample's
# CSV (tests/test_docs.py checks that annotate still writes exactly it), and screenshots of the
# sample's page and of a folder report (headless Chromium: apt install chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
avemo annotate examples/sample.mp4 -o "$out" --format csv,vtt,html --plot --overlay \
    --overwrite --quiet
mkdir -p docs
cp "$out/sample.avemo.png" docs/sample_plot.png
ffmpeg_bin=$(python -c "from avemo_cli.demux import ffmpeg_exe; print(ffmpeg_exe())")
"$ffmpeg_bin" -v error -y -ss 8.4 -i "$out/sample.avemo.mp4" -frames:v 1 docs/sample_overlay.png
cp "$out/sample.avemo.csv" docs/sample.avemo.csv
# a folder report: the sample, what ../shared/data offers (speech, a talking head), a bad file
mkdir -p "$out/folder"
cp examples/sample.mp4 "$out/folder/"
for f in ../shared/data/crema-d/1002_DFA_HAP_XX.mp3 ../shared/data/crema-d/1002_DFA_ANG_XX.mp3 \
         ../shared/data/videos/WDA_KatieHill_000.mp4; do
    [ -f "$f" ] && cp "$f" "$out/folder/"
done
printf 'not a video' > "$out/folder/broken.mp4"
avemo annotate "$out/folder" -o "$out/folder-out" --format csv,html --quiet 2>/dev/null || true
avemo status "$out/folder-out" --html > /dev/null || true
python - "$out" <<'PY'
import sys
from pathlib import Path

sys.path.insert(0, "tests")
from browser import Browser  # noqa: E402

out = Path(sys.argv[1])
with Browser(1180, 760) as b:
    b.open((out / "sample.avemo.html").as_uri(), "window.avemoPage && window.avemoPage.ready")
    b.wait_for("document.getElementById('media').readyState >= 2", 20)
    b.eval("document.getElementById('media').currentTime = 8.4")
    b.wait_for("Math.abs(window.avemoPage.cursorTime - 8.4) < 0.05", 10)
    b.screenshot(Path("docs/page.png"))
with Browser(1180, 420) as b:
    b.open((out / "folder-out" / "avemo-report.html").as_uri(),
           "window.avemoPage && window.avemoPage.ready")
    b.screenshot(Path("docs/report.png"))
PY
rm -r "$out"
echo docs/sample_plot.png docs/sample_overlay.png docs/sample.avemo.csv docs/page.png docs/report.png
