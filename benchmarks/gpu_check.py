"""The GPU check's measurements (benchmarks/gpu_check.sh runs it after staging): annotate a
folder on the device with --jobs auto, then time training steps there; prints table rows.

    python benchmarks/gpu_check.py DEVICE FOLDER OUT BATCHES
"""
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from avemo_cli.batch import AnnotateOptions, annotate_files
from avemo_cli.pipeline import Annotator
from avemo_cli.settings import AnnotatorSettings


def main() -> None:
    device, folder, out, batches = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") and \
        torch.cuda.is_available() else platform.processor() or platform.machine()
    print(f"gpu_check: {name}; {os.cpu_count()} cores; torch {torch.__version__}; "
          f"device {device}")

    jobs = os.cpu_count() or 1  # --jobs auto
    options = AnnotateOptions(output_dir=out, jobs=jobs, one_model=True,  # (CUDA's default;
                              settings=AnnotatorSettings(device=device))  # the CPU's path too)
    processes = options.extraction_processes(len(list(Path(folder).glob("*.mp4"))))
    batches_seen: list[int] = []
    many = Annotator.predict_many

    def counted(self, files):
        batches_seen.append(len(files))
        return many(self, files)

    Annotator.predict_many = counted  # type: ignore[method-assign]  # (files per model call)
    t0 = time.perf_counter()
    report = annotate_files([folder], options)
    wall = time.perf_counter() - t0
    if report.failed or not report.written:
        sys.exit(f"gpu_check: annotate failed: {report.failed[:3]}")
    media, model = report.media_seconds, report.timings["model"]
    busy = sum(report.timings.values())
    print(f"| annotate --device {device} --jobs auto ({jobs}) | {len(report.written)} videos, "
          f"{media:.0f} s of media | {media / wall:.1f}x real time for the box (start-up "
          f"included) | the model's share of the busy time: {model / busy:.0%} ({model:.1f} of "
          f"{busy:.1f} s, all processes) | {processes} extraction processes; files per "
          f"model call: {', '.join(map(str, batches_seen))} |")
    for modality in ("video", "av"):
        proc = subprocess.run([sys.executable, "benchmarks/bench_train.py", "--device", device,
                               "--modalities", modality, "--windows", "16", "--repeats", "1",
                               "--batches", str(batches), "--only-window"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"gpu_check: training failed: {proc.stderr[-2000:]}")
        row = [line for line in proc.stdout.splitlines() if line.startswith(f"| {modality} |")]
        print(row[-1] if row else proc.stdout[-500:])


if __name__ == "__main__":
    main()
