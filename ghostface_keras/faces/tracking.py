"""Following faces from frame to frame: `IoUTracker` matches each frame's boxes to the tracks of the frames before.

A `Track` also holds what `ghostface_keras.faces.video.watch` last computed for its face (embedding, name, when it was
embedded), so a face is embedded again only when `Track.embedding_reason` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from collections.abc import Sequence

import numpy as np


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of each box of `a` (N, 4) with each of `b` (M, 4), boxes x1 y1 x2 y2 -> (N, M)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 1, 4), np.asarray(b, np.float64).reshape(1, -1, 4)
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)

    def area(box: np.ndarray) -> np.ndarray:
        return np.clip(box[..., 2] - box[..., 0], 0, None) * np.clip(box[..., 3] - box[..., 1], 0, None)

    union = area(a) + area(b) - width * height
    return np.where(union > 0, width * height / np.maximum(union, 1e-12), 0.0)


@dataclass
class Track:
    """One face followed over frames, and what `watch` last computed for it."""

    track_id: int
    box: np.ndarray
    missed: int = 0                       # consecutive frames without a matching box
    embedded_frame: int = -1              # frame of the last embedding (-1: none yet); its box area and appearance:
    embedded_area: float = 0.0
    thumbnail: np.ndarray | None = None
    embedding: np.ndarray | None = None
    name: str | None = None               # gallery identity at or above the threshold, else None
    nearest: str = ""                     # most similar gallery identity
    similarity: float = float("nan")

    def embedding_reason(self, frame: int, area: float, thumbnail: np.ndarray | None, reembed_every: int | None,
                         grow_ratio: float | None, change_threshold: float | None) -> str | None:
        """Why this track needs a new embedding now ("new", "every", "grew", "changed"), or None to reuse it."""
        if self.embedded_frame < 0:
            return "new"
        if reembed_every and frame - self.embedded_frame >= reembed_every:
            return "every"
        if grow_ratio and area >= grow_ratio * self.embedded_area:
            return "grew"
        if change_threshold and thumbnail is not None and self.thumbnail is not None \
                and 1.0 - float(thumbnail @ self.thumbnail) > change_threshold:
            return "changed"
        return None


class IoUTracker:
    """Follows boxes from frame to frame by overlap alone: cheap, and enough at video rates, where a face moves
    little between frames. `update` matches boxes to live tracks greedily, highest IoU first (an optimal
    assignment rarely differs for the few, mostly disjoint faces of a frame), never under `min_iou`. An unmatched
    box starts a track with a new id; a track unmatched for more than `max_missed` consecutive frames ends (so a
    detection missed once or twice does not split it).

    Example:
        >>> tracker = IoUTracker()
        >>> [track.track_id for track in tracker.update([[0, 0, 10, 10], [50, 50, 60, 60]])]
        [1, 2]
        >>> [track.track_id for track in tracker.update([[52, 51, 62, 61], [90, 0, 99, 9], [1, 0, 11, 10]])]
        [2, 3, 1]
    """

    def __init__(self, min_iou: float = 0.3, max_missed: int = 5) -> None:
        self.min_iou, self.max_missed = float(min_iou), int(max_missed)
        self.tracks: list[Track] = []
        self._next_id = 1

    def new_id(self) -> int:
        """A track id never given before (`watch` gives one to a track whose face became another person's)."""
        self._next_id += 1
        return self._next_id - 1

    def update(self, boxes: Sequence[Any]) -> list[Track]:
        """The track of each box (same order), after matching, starting and ending tracks."""
        boxes = [np.asarray(box, np.float32).reshape(4) for box in boxes]
        matched: list[Track | None] = [None] * len(boxes)
        if boxes and self.tracks:
            overlaps = _box_iou(np.stack(boxes), np.stack([track.box for track in self.tracks]))
            taken: set[int] = set()
            for flat in np.argsort(-overlaps, axis=None, kind="stable"):
                row, column = divmod(int(flat), len(self.tracks))
                if overlaps[row, column] < self.min_iou:
                    break
                if matched[row] is None and column not in taken:
                    matched[row] = self.tracks[column]
                    taken.add(column)
        for track in self.tracks:
            track.missed += not any(track is other for other in matched)
        self.tracks = [track for track in self.tracks if track.missed <= self.max_missed]
        for index, box in enumerate(boxes):
            if matched[index] is None:
                matched[index] = Track(self.new_id(), box)
                self.tracks.append(matched[index])
            matched[index].box, matched[index].missed = box, 0
        return matched  # type: ignore[return-value]
