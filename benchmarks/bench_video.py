"""Video decoding and storing (issue 15), on the CPU: the project's reader against PyAV's plain decode of the same
files, and what storing a clip in a shard costs (kept as encoded, or re-encoded above shard.max_video_side).

Encodes `--clips` synthetic clips (moving squares over noise; H.264 in MP4, `--frames` frames of `--side` px at 8
frames/s) in memory, then times, the median of `--repeats` runs each:

1. `pyav plain`: `av.open` and `decode` of every frame to RGB (`to_ndarray("rgb24")`), FFmpeg's default threads: the
   baseline.
2. `read_frames, all frames, threads=T`: `data.video.read_frames` as validation and `decode_members` read a clip
   (packets counted first, then decoded with T FFmpeg threads).
3. `read_frames, 8 segment centres`: what the shard stage reads for `video.emb` (all frames decoded, 8 converted).
4. `video_member kept` / `video_member re-encoded`: a clip as the shards store it, as given, or decoded, scaled to half
   its side and re-encoded (H.264, one encoder thread, bit-exact).

Prints JSON: seconds, frames/s and the ratios to the baseline.

Usage: python benchmarks/bench_video.py [--clips 24] [--frames 32] [--side 128] [--repeats 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger("bench_video")


def make_clips(n: int, frames: int, side: int) -> list[bytes]:
    from multigeometry.data.video import encode_clip

    clips = []
    for i in range(n):
        rng = np.random.default_rng(i)
        background = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
        out = np.repeat(background[None], frames, axis=0)
        size = side // 4
        for t in range(frames):
            x = (t * (side - size)) // max(1, frames - 1)
            out[t, size : 2 * size, x : x + size] = (200, 40, 40)
        clips.append(encode_clip(out, 8, "mp4"))
    return clips


def pyav_plain(data: bytes) -> int:
    import av

    with av.open(io.BytesIO(data)) as container:
        return sum(1 for frame in container.decode(video=0) if frame.to_ndarray(format="rgb24") is not None)


def timed(fn: Callable[[], int], repeats: int) -> tuple[float, list[float], int]:
    fn()  # warm-up
    runs, count = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        count = fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), runs, count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--side", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from multigeometry.data.video import read_frames, video_member

    clips = make_clips(args.clips, args.frames, args.side)
    limits = {"max_frames": 100_000, "max_pixels": 1 << 24}
    cases: dict[str, Callable[[], int]] = {
        "pyav plain": lambda: sum(pyav_plain(c) for c in clips),
        "read_frames, all frames, threads=1": lambda: sum(len(read_frames(c, threads=1, **limits)[0]) for c in clips),
        "read_frames, all frames, threads=2": lambda: sum(len(read_frames(c, threads=2, **limits)[0]) for c in clips),
        # every frame is decoded, 8 converted to RGB: frames/s counts the decoded ones
        "read_frames, 8 segment centres, threads=2": lambda: args.frames * len(
            [read_frames(c, 8, threads=2, **limits) for c in clips]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, c in enumerate(clips):
            path = Path(tmp) / f"{i}.mp4"
            path.write_bytes(c)
            paths.append(path)
        cases["video_member kept"] = lambda: args.frames * len([video_member(p, args.side, limits) for p in paths])
        cases["video_member re-encoded at half the side"] = lambda: args.frames * len(
            [video_member(p, args.side // 2, limits) for p in paths])
        results = {}
        for name, fn in cases.items():
            median, runs, frames = timed(fn, args.repeats)
            results[name] = {"median_s": round(median, 4), "range_s": [round(min(runs), 4), round(max(runs), 4)],
                             "frames_per_s": round(frames / median, 1)}
            log.info("%-45s %.3f s  %.0f frames/s", name, median, frames / median)
    base = results["pyav plain"]["median_s"]
    for entry in results.values():
        entry["time_vs_pyav_plain"] = round(entry["median_s"] / base, 3)
    report = {
        "clips": args.clips, "frames": args.frames, "side": args.side, "repeats": args.repeats,
        "mp4_bytes_per_clip": int(statistics.mean(len(c) for c in clips)),
        "python": platform.python_version(), "machine": platform.machine(), "results": results,
    }
    emit(report, args.out)
    return 0


def emit(report: dict, out: Path | None) -> None:
    """The report as JSON on standard output, and in `out` when given."""
    text = json.dumps(report, indent=2)
    if out:
        out.write_text(text + "\n")
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
