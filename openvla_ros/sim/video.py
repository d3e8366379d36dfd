"""MP4 recording of an episode's upright agentview frames (imageio + ffmpeg)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def episode_video_path(video_dir: str | Path, task_suite: str, task_id: int, init_state_id: int, episode: int) -> Path:
    return Path(video_dir) / f"{task_suite}_task{task_id:02d}_init{init_state_id:02d}_ep{episode:04d}.mp4"


class EpisodeVideo:
    """Frames are appended as they are published; close() finalizes the file."""

    def __init__(self, path: str | Path, fps: float = 20.0) -> None:
        import imageio.v2 as imageio

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.frames = 0
        # macro_block_size=1 keeps odd camera sizes unscaled; 256 and 224 are already aligned.
        self._writer = imageio.get_writer(str(self.path), fps=fps, codec="libx264", macro_block_size=1)

    def add(self, frame: np.ndarray) -> None:
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"video frames must be uint8 HxWx3, got {frame.dtype} {frame.shape}")
        self._writer.append_data(frame)
        self.frames += 1

    def close(self) -> Path:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return self.path
