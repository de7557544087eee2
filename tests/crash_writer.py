"""Helper process for the crash-safety test: writes episodes, then dies mid-episode.

    python tests/crash_writer.py PATH N_FULL [partial|loop]
"""
import sys
import time

import numpy as np

from data.episodes import EpisodeWriter


def episode(i: int, length: int = 12) -> dict:
    rng = np.random.default_rng(i)
    return {"state": rng.normal(size=(length, 10)).astype(np.float32),
            "action": rng.normal(size=(length, 10)).astype(np.float32),
            "rgb/front": rng.integers(0, 255, (length, 16, 16, 3), dtype=np.uint8)}


if __name__ == "__main__":
    path, n_full, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    writer = EpisodeWriter.create(path, attrs={"task": "crash_test"})
    for i in range(n_full):
        writer.add_episode(episode(i), success=True, source="scripted", seed=i)
        print(f"committed {i}", flush=True)
    if mode == "partial":
        # what a writer killed between its frame appends and its commit leaves behind
        frames = episode(n_full)
        for key in ("state", "rgb/front"):
            writer.group["data"][key].append(frames[key], axis=0)
        print("partial", flush=True)
        time.sleep(60)
    else:
        i = n_full
        while True:
            writer.add_episode(episode(i), success=True, source="scripted", seed=i)
            print(f"committed {i}", flush=True)
            i += 1
