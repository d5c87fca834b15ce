"""Piano-roll pictures of a piece as PNG, with no plotting library.

One column per grid step (scaled), one row per pitch, a colour per instrument, grey bar
lines. The PNG encoder is the few lines the format needs (zlib-compressed RGB rows).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..midi.instruments import DRUMS, INSTRUMENTS
from ..midi.score import Note

# One colour per category (piano .. ethnic, drums), picked to tell neighbours apart.
COLOURS = np.array([
    (66, 133, 244), (171, 71, 188), (255, 167, 38), (229, 57, 53), (38, 166, 154),
    (124, 179, 66), (255, 213, 79), (141, 110, 99), (236, 64, 122), (92, 107, 192),
    (0, 172, 193), (120, 120, 120),
], dtype=np.uint8)
BACKGROUND = (250, 250, 250)
BAR_LINE = (200, 200, 200)


def render(notes: list[Note], *, steps_per_bar: int, length: int | None = None,
           step_px: int = 2, pitch_px: int = 3) -> np.ndarray:
    """An RGB image (height, width, 3): melodic notes on pitch rows spanning their range, and
    below a separating line one row per drum sound used (drum "pitches" are not pitches)."""
    length = length or max((n.start + n.duration for n in notes), default=steps_per_bar)
    melodic = [n for n in notes if n.instrument != DRUMS.index]
    drums = [n for n in notes if n.instrument == DRUMS.index]
    if melodic:
        low = max(min(n.pitch for n in melodic) - 2, 0)
        high = min(max(n.pitch for n in melodic) + 2, 127)
    else:
        low, high = 48, 72
    row_of = {pitch: high - pitch for pitch in range(low, high + 1)}
    sounds = sorted({n.pitch for n in drums}, reverse=True)
    drum_row = {pitch: high - low + 2 + i for i, pitch in enumerate(sounds)}
    rows = (high - low + 1 + (1 + len(sounds) if sounds else 0)) * pitch_px
    image = np.empty((rows, length * step_px, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for bar in range(0, length, steps_per_bar):
        image[:, bar * step_px] = BAR_LINE
    if sounds:
        separator = (high - low + 1) * pitch_px + pitch_px // 2
        image[separator] = BAR_LINE
    for note in melodic + drums:
        row = drum_row[note.pitch] if note.instrument == DRUMS.index else row_of[note.pitch]
        top = row * pitch_px
        left = note.start * step_px
        stop = note.start + (2 if note.instrument == DRUMS.index else note.duration)  # hits: 2 steps wide
        right = max(min(stop, length) * step_px - 1, left + 1)
        image[top : top + pitch_px - 1, left:right] = COLOURS[note.instrument]
    return image


def write_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an RGB uint8 image as PNG (8-bit truecolour)."""
    height, width, _ = image.shape
    raw = np.concatenate([np.zeros((height, 1), dtype=np.uint8),
                          image.reshape(height, width * 3)], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    payload = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
               + chunk(b"IEND", b""))
    path = Path(path)
    path.write_bytes(payload)
    return path


def legend() -> dict[str, tuple[int, int, int]]:
    """Instrument name -> RGB colour used in the pictures."""
    return {inst.name: tuple(int(c) for c in COLOURS[inst.index]) for inst in INSTRUMENTS}
