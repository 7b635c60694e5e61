#!/usr/bin/env bash
# The README's figures, made by the project's own commands from the bundled sample and the
# shipped default model: the valence plot and one still of the attention overlay.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
avemo annotate examples/sample.mp4 -o "$out" --plot --overlay --overwrite --quiet
mkdir -p docs
cp "$out/sample.avemo.png" docs/sample_plot.png
ffmpeg_bin=$(python -c "from avemo_cli.demux import ffmpeg_exe; print(ffmpeg_exe())")
"$ffmpeg_bin" -v error -y -ss 8.4 -i "$out/sample.avemo.mp4" -frames:v 1 docs/sample_overlay.png
cp "$out/sample.avemo.csv" docs/sample.avemo.csv
rm -r "$out"
echo docs/sample_plot.png docs/sample_overlay.png docs/sample.avemo.csv
