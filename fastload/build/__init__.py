"""The offline stage, run once: label sources as users hold them → validated records → masks and instance tables →
tar shards (the cache).

Sources: COCO instance JSON (`coco`, with `records`, `geometry`, `rle`; rasterised by `raster`, tabled by `tables`;
`coco_instances` puts it in the common type, things and stuff as the config's ``things:`` says), COCO panoptic
PNGs + JSON (`coco_panoptic`) and Cityscapes polygon JSON (`cityscapes`): every reader returns one per-image type
(`sources.LabelImage`) whose masks are computed lazily, one image at a time, in the writer's workers; `inputs`
picks the reader a build's arguments name. The cache: `build.build_cache` (nodes, splits, resume, the `lock`) runs
`writer.ShardWriter`s in a `pool` of workers; `imagefile` checks each image file, `fingerprint` keys a shard's
completion record, `merge` joins the nodes' parts. `synth` and `synth_formats` write synthetic data sets in those
layouts.
"""
