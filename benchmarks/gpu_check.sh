#!/usr/bin/env bash
# The GPU check (issue 31): on a machine with CUDA, PyTorch, pandas, click, rich and pyarrow but
# no opensmile, dlib or ffmpeg, install what was carried, annotate a carried folder of videos
# with --device cuda --jobs auto (x real time for the box, and the model's share of the busy
# time), and time training steps of the video and av models on the device (clips/s).
#
#   bash benchmarks/gpu_check.sh [--device cuda] [--folder DIR] [--batches 300] [--stage DIR]
#
# On the CPU (what this project's CI-free check runs: --device cpu and a small folder) it runs
# the same code paths, the model on the CPU.
#
# Staging (a device call carries 64 MiB at most; what is unpacked outside $OUT stays while the
# machine is warm, 30 s between calls). Prepare here, into an ignored folder (e.g. carried/):
#   call 1 carries carried/stage1/:
#     ffmpeg.xz        the imageio-ffmpeg wheel's binary, xz -9 (about 50 MB)
#     wheels/          opensmile and dlib-bin wheels for the box's Python (about 5 MB), and
#                      avemo's own (pip wheel --no-deps .)
#     command: bash benchmarks/gpu_check.sh --stage carried/stage1 --stage-only
#   call 2, at once, carries carried/stage2/:
#     landmarks.xz     dlib's 68-point model (shape_predictor_68_face_landmarks.dat, xz -9,
#                      about 60 MiB), and descriptors.xz for --max-faces above 1 (not needed here)
#     videos/          the folder to annotate (a few short videos)
#     command: bash benchmarks/gpu_check.sh --stage carried/stage2 --folder carried/stage2/videos
# The unpacked files go to /tmp/avemo-gpu (ffmpeg: AVEMO_FFMPEG; the dlib models: a
# face_recognition_models package there, on PYTHONPATH). Where a file is already there (or the
# module already importable), nothing is unpacked.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda FOLDER="" BATCHES=300 STAGE="" STAGE_ONLY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --folder) FOLDER=$2; shift 2 ;;
        --batches) BATCHES=$2; shift 2 ;;
        --stage) STAGE=$2; shift 2 ;;
        --stage-only) STAGE_ONLY=1; shift ;;
        *) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-python3}
BOX=/tmp/avemo-gpu
mkdir -p "$BOX/frm/face_recognition_models/models"
if [ -n "$STAGE" ]; then
    if [ -f "$STAGE/ffmpeg.xz" ] && [ ! -x "$BOX/ffmpeg" ]; then
        xz -dc "$STAGE/ffmpeg.xz" > "$BOX/ffmpeg" && chmod +x "$BOX/ffmpeg"
    fi
    if [ -d "$STAGE/wheels" ]; then
        "$PY" -m pip install -q --no-index --find-links "$STAGE/wheels" "$STAGE"/wheels/*.whl
    fi
    for pair in landmarks:shape_predictor_68_face_landmarks.dat \
                descriptors:dlib_face_recognition_resnet_model_v1.dat; do
        src="$STAGE/${pair%%:*}.xz" dst="$BOX/frm/face_recognition_models/models/${pair#*:}"
        if [ -f "$src" ] && [ ! -f "$dst" ]; then xz -dc "$src" > "$dst"; fi
    done
    touch "$BOX/frm/face_recognition_models/__init__.py"
fi
[ "$STAGE_ONLY" = 1 ] && { echo "gpu_check: staged into $BOX"; exit 0; }
[ -x "$BOX/ffmpeg" ] && export AVEMO_FFMPEG="$BOX/ffmpeg"
if ! "$PY" -c "import face_recognition_models" 2>/dev/null; then
    export PYTHONPATH="$BOX/frm${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -z "$FOLDER" ]; then  # (a small folder of the shared studio clips, made here)
    FOLDER=$BOX/videos
    "$PY" benchmarks/bench_jobs.py --videos "${VIDEOS:-4}" --seconds "${SECONDS_EACH:-8}" --make-only "$FOLDER"
fi
OUT=$BOX/out
rm -rf "$OUT"
"$PY" benchmarks/gpu_check.py "$DEVICE" "$FOLDER" "$OUT" "$BATCHES"
