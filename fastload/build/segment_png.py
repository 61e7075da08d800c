"""The segment-id PNG of panoptic data sets (COCO panoptic, Cityscapes' ``createPanopticImgs``, Mapillary):
pixel id ``R + 256·G + 256²·B`` of an 8-bit RGB PNG, 0 for void. Decoded with every check before and after
the decoder (`decode_segment_ids`), and encoded back (`segment_ids_to_bgr`) for synthetic data and tests.
"""

from __future__ import annotations

import cv2
import numpy as np

from fastload.cache.format import truncation_problem
from fastload.cache.images import image_header_size
from fastload.errors import ImageError

MAX_SEGMENT_ID = (1 << 24) - 1  # R + 256·G + 256²·B of an 8-bit RGB pixel
PNG_FIX = "fix or regenerate the panoptic PNG (or its annotation), or pass --on-error skip"


def decode_segment_ids(data: bytes, height: int, width: int, *, max_image_pixels: int, where: str) -> np.ndarray:
    """Segment ids ``R + 256·G + 256²·B`` of a panoptic PNG, checked before and after decoding.

    Parameters
    ----------
    data : the PNG file's bytes
    height, width : the size the image's record declares (the PNG must have it)
    max_image_pixels : a header declaring more pixels is refused before decoding
    where : how messages name the file (image id, file names)

    Returns
    -------
    uint32 (height, width)

    Raises
    ------
    ImageError
        Not a PNG, truncated, another size, too many pixels, undecodable, not 3 channels of uint8.
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ImageError(f"{where}: not a PNG file (starts with {data[:8]!r}); {PNG_FIX}")
    problem = truncation_problem(data, "png")
    try:
        size = image_header_size(data)
    except ImageError as exc:
        problem = problem or str(exc)
    if problem:
        raise ImageError(f"{where}: {problem}; {PNG_FIX}")
    if size[0] * size[1] > max_image_pixels:
        raise ImageError(
            f"{where}: its header declares {size[0]} x {size[1]} = {size[0] * size[1]} pixels, more than "
            f"max_image_pixels ({max_image_pixels}); refused before decoding; {PNG_FIX}"
        )
    if size != (height, width):
        raise ImageError(
            f"{where}: the PNG is {size[0]} x {size[1]} (height x width), the image record says {height} x {width}; "
            + PNG_FIX
        )
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageError(f"{where}: does not decode ({str(exc).strip().splitlines()[-1]}); {PNG_FIX}") from None
    if bgr is None:
        raise ImageError(f"{where}: does not decode; {PNG_FIX}")
    if bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3:
        channels = 1 if bgr.ndim == 2 else bgr.shape[2]
        raise ImageError(
            f"{where}: decodes to {channels} channel(s) of {bgr.dtype}; a panoptic PNG is 8-bit RGB (segment id = "
            f"R + 256*G + 256**2*B); {PNG_FIX}"
        )
    if bgr.shape[:2] != (height, width):  # the header said otherwise: a file that lies about itself
        raise ImageError(f"{where}: decodes to {bgr.shape[0]} x {bgr.shape[1]}, not its header's size; {PNG_FIX}")
    ids = bgr[:, :, 2].astype(np.uint32)  # OpenCV's order is B, G, R
    ids |= bgr[:, :, 1].astype(np.uint32) << 8
    ids |= bgr[:, :, 0].astype(np.uint32) << 16
    return ids


def segment_ids_to_bgr(ids: np.ndarray) -> np.ndarray:
    """The inverse of `decode_segment_ids`' formula: uint8 (H, W, 3) in OpenCV's B, G, R order (to write a PNG).

    Raises
    ------
    ValueError
        An id outside 0..2^24-1.
    """
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() > MAX_SEGMENT_ID):
        raise ValueError(f"segment ids must lie in 0..{MAX_SEGMENT_ID}, got {ids.min()}..{ids.max()}")
    ids = ids.astype(np.uint32)
    return np.stack([(ids >> 16) & 255, (ids >> 8) & 255, ids & 255], axis=-1).astype(np.uint8)
