"""The instance table of one rasterised image: what a cache sample's meta lists about each of its instances."""

from __future__ import annotations

from fastload.build.raster import RasterResult
from fastload.targets import instance_centres


def instance_table(raster: RasterResult) -> list[dict]:
    """One row per kept instance of a raster: ids, visible bbox, visible area and centre.

    Parameters
    ----------
    raster : RasterResult
        From `fastload.build.raster.rasterize_image`; instance ``k + 1`` is ``raster.instances[k]``.

    Returns
    -------
    list of dict
        ``{"id", "annotation_id", "category_id" (COCO id), "train_id", "bbox": [x, y, w, h] of the
        visible pixels (ints, w = last − first column + 1; the rasteriser's ``boxes``), "area": visible pixel
        count, "centre": [row, column] (floats; area and centre as the targets define them,
        `fastload.targets.instance_centres`)}``, in id order.
    """
    ids, counts, centres = instance_centres(raster.instance)
    rows = []
    for k, inst_id in enumerate(ids.tolist()):
        inst = raster.instances[inst_id - 1]
        rows.append(
            {
                "id": inst_id,
                "annotation_id": inst.annotation_id,
                "category_id": inst.category_id,
                "train_id": inst.train_id,
                "bbox": raster.boxes[inst_id - 1].tolist(),
                "area": int(counts[k]),
                "centre": centres[k].tolist(),
            }
        )
    return rows
