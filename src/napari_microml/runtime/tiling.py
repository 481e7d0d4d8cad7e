"""Run an image network over an image of any size in overlapping, blended tiles.

One routine serves every image tool. Tiles overlap by ``overlap`` pixels and are blended
with a separable ramp window so seams do not show; memory is bounded by ``tile`` and
``batch_size``, not by the image size.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import numpy as np

# default largest tile of the image tools: a piece takes well under a second on a CPU, so a
# run can be cancelled between pieces (a 1024² image in one piece took seconds)
TILE = 512


def tile_batch(tile: int, device) -> int:
    """Return how many tiles to run at once: one on a CPU (a cancel point after every tile),
    else as many as fit in a 1024² image's memory."""
    if getattr(device, "type", str(device)) == "cpu":
        return 1
    return max(1, (1024 * 1024) // (tile * tile))


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def _ramp(tile: int, overlap: int) -> np.ndarray:
    w = np.ones(tile, np.float32)
    if overlap > 0:
        edge = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        w[:overlap] = edge
        w[-overlap:] = np.minimum(w[-overlap:], edge[::-1])
    return w


def tiled_predict(
    predict: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    *,
    out_channels: int,
    tile: int = 512,
    overlap: int = 32,
    batch_size: int = 4,
    multiple: int = 8,
) -> Generator[tuple[int, int], None, np.ndarray]:
    """Generator: apply ``predict`` tile by tile; yields ``(done, total)``, returns the output.

    Parameters
    ----------
    predict : callable
        Maps a batch ``(B, C, t, t)`` float32 array to ``(B, out_channels, t, t)``.
    image : ndarray
        ``(C, H, W)`` float32 input.
    out_channels : int
        Channels of the network output.
    tile, overlap : int
        Tile edge and overlap in pixels. Images smaller than ``tile`` run in one piece,
        padded up to a multiple of ``multiple`` (the network's down-sampling factor).

    Returns
    -------
    ndarray
        ``(out_channels, H, W)`` float32, as the generator's return value.
    """
    image = np.asarray(image, np.float32)
    if image.ndim != 3:
        raise ValueError("tiled_predict expects a (channels, height, width) array.")
    c, h, w = image.shape
    tile = int(min(tile, -(-max(h, w) // multiple) * multiple))
    tile = max(multiple, -(-tile // multiple) * multiple)
    overlap = int(min(overlap, tile // 4))
    if max(h, w) > tile:  # shrink tiles so the fewest needed cover the image with little waste
        inner = tile - 2 * overlap
        n = -(-(max(h, w) - 2 * overlap) // inner)
        tile = -(-((max(h, w) - 2 * overlap) / n + 2 * overlap) // multiple) * multiple
        tile = int(max(tile, 4 * overlap, multiple))
    ph, pw = max(h, tile), max(w, tile)
    padded = np.pad(
        image, ((0, 0), (0, ph - h), (0, pw - w)), mode="reflect" if min(h, w) > 1 else "edge"
    )
    step = tile - 2 * overlap if tile > 2 * overlap else tile
    corners = [(y, x) for y in _starts(ph, tile, step) for x in _starts(pw, tile, step)]
    window = np.outer(_ramp(tile, overlap), _ramp(tile, overlap))
    out = np.zeros((out_channels, ph, pw), np.float32)
    weight = np.zeros((ph, pw), np.float32)
    total = len(corners)
    for i in range(0, total, batch_size):
        chunk = corners[i : i + batch_size]
        batch = np.stack([padded[:, y : y + tile, x : x + tile] for y, x in chunk])
        pred = np.asarray(predict(batch), np.float32)
        for (y, x), p in zip(chunk, pred, strict=True):
            out[:, y : y + tile, x : x + tile] += p * window
            weight[y : y + tile, x : x + tile] += window
        yield min(i + batch_size, total), total
    out /= np.maximum(weight, 1e-8)
    return out[:, :h, :w]
