"""How fast the local engine renders, as ratios that matter to a person waiting for a clip.

Run: `.venv/bin/python bench/render_bench.py`. It builds a synthetic 1920×1080 photo-like
picture, renders a 5 s clip with a 1280 px long side several times (one camera move per run, then
once blending into a tail frame, then two renders at once to show whether they overlap or queue
behind the GIL), and times four image variations. The target is render time / clip time ≤ 1.0 on a
2-core machine. Nothing is asserted; the table is the result. It stops itself well within 2 minutes.
"""

import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from the repository or from anywhere else

from providers.local_render import render_images, render_video  # noqa: E402

CLIP_SECONDS = 5
BUDGET_SECONDS = 90  # later measurements are skipped rather than overrun the 2-minute promise


def photo_like(width=1920, height=1080, seed=7):
    """Sky gradient, sun, hills, buildings and sensor noise: detail x264 has to work for."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    sky = np.dstack([235 - 80 * yy / height, 190 - 60 * yy / height, 120 + 60 * yy / height])
    picture = sky.astype(np.uint8)
    sun = (int(width * 0.72), int(height * 0.28))
    cv2.circle(picture, sun, height // 9, (170, 230, 255), -1, cv2.LINE_AA)
    for layer, colour in enumerate([(90, 120, 80), (60, 95, 55), (40, 70, 40)]):
        ridge = height * (0.55 + 0.1 * layer) + 40 * np.sin(np.linspace(0, 6 + 3 * layer, width) + layer)
        hill = np.array([[x, int(ridge[x])] for x in range(0, width, 8)] + [[width, height], [0, height]])
        cv2.fillPoly(picture, [hill.astype(np.int32)], colour, cv2.LINE_AA)
    for _ in range(40):
        x, w, h = int(rng.integers(0, width)), int(rng.integers(20, 70)), int(rng.integers(60, 260))
        shade = tuple(int(v) for v in rng.integers(40, 200, 3))
        cv2.rectangle(picture, (x, height - h), (x + w, height), shade, -1)
        for wy in range(height - h + 10, height - 10, 18):  # lit windows: fine detail
            cv2.line(picture, (x + 5, wy), (x + w - 5, wy), (80, 200, 230), 2)
    noise = rng.normal(0, 5, picture.shape)
    return np.clip(cv2.GaussianBlur(picture, (0, 0), 0.8) + noise, 0, 255).astype(np.uint8)


def cpu_seconds():
    times = os.times()  # counts every thread of this process, x264's and OpenCV's included
    return times.user + times.system


def timed(function, *args, **kwargs):
    """(wall seconds, cores kept busy on average, result)."""
    started, cpu_started = time.perf_counter(), cpu_seconds()
    result = function(*args, **kwargs)
    wall = time.perf_counter() - started
    return wall, (cpu_seconds() - cpu_started) / wall, result


def two_at_once(first, folder):
    """Two renders in two threads, as the provider's pool runs them."""
    threads = [threading.Thread(target=render_video, args=(first, folder / f"both-{i}.mp4"),
                                kwargs={"duration": CLIP_SECONDS}) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main():
    bench_started = time.perf_counter()
    rows = []  # (what, seconds, cores busy, clip seconds)
    with tempfile.TemporaryDirectory(prefix="render-bench-") as folder:
        work = Path(folder)
        cv2.imwrite(str(work / "first.png"), photo_like())
        cv2.imwrite(str(work / "tail.png"), cv2.flip(photo_like(seed=8), 1))

        clip_times, size = [], None
        for camera in ["zoom_in", "pan_left", "tilt_up", "zoom_out", "pan_right"]:
            if time.perf_counter() - bench_started > BUDGET_SECONDS:
                break
            seconds, busy, info = timed(render_video, work / "first.png", work / f"{camera}.mp4",
                                        camera=camera, duration=CLIP_SECONDS)
            clip_times.append(seconds)
            size = f"{info['width']}×{info['height']}, {info['frames']} frames"
            rows.append((f"clip {camera}", seconds, busy, CLIP_SECONDS))
        seconds, busy, _ = timed(render_video, work / "first.png", work / "tail.mp4", tail=work / "tail.png",
                                 duration=CLIP_SECONDS)
        rows.append(("clip zoom_in + tail frame", seconds, busy, CLIP_SECONDS))
        parallel, busy, _ = timed(two_at_once, work / "first.png", work)
        rows.append(("two clips at once (wall)", parallel, busy, 2 * CLIP_SECONDS))

        image_times = []
        for _ in range(3):
            if time.perf_counter() - bench_started > BUDGET_SECONDS:
                break
            seconds, _, _ = timed(render_images, work / "first.png", work / "images", n=4,
                                  aspect_ratio="16:9")
            image_times.append(seconds)

    median_clip = statistics.median(clip_times)
    print(f"local engine render bench — {os.cpu_count()} CPU(s), OpenCV threads {cv2.getNumThreads()}")
    print(f"source 1920×1080 → clip {size}, {CLIP_SECONDS} s at 24 fps\n")
    print(f"{'run':<30}{'seconds':>9}{'render/clip':>13}{'cores busy':>12}")
    for what, seconds, busy, clip in rows:
        print(f"{what:<30}{seconds:>9.2f}{seconds / clip:>13.2f}{busy:>12.2f}")
    print("-" * 64)
    print(f"{'median clip render':<30}{median_clip:>9.2f}{median_clip / CLIP_SECONDS:>13.2f}"
          f"   (target ≤ 1.00; {len(clip_times)} runs)")
    speed_up = 2 * median_clip / parallel
    print(f"{'two at once vs one by one':<30}{parallel:>9.2f}{'':>13}   speed-up ×{speed_up:.2f} "
          "(≈1.0: one render already keeps the cores busy)")
    print(f"{'images n=4, 16:9 (median)':<30}{statistics.median(image_times):>9.2f}{'':>13}"
          f"   ({len(image_times)} runs, 1536×864 PNGs)")
    print(f"\ntotal bench time {time.perf_counter() - bench_started:.1f} s")


if __name__ == "__main__":
    main()
