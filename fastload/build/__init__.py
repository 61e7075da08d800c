"""The offline build stage: label sources as users hold them (COCO panoptic PNGs + JSON, Cityscapes polygon
JSON), read and validated into one per-image type (`fastload.build.labels.LabelImage`) whose masks (semantic
train ids, thing instance ids, instance table) are computed lazily, one image at a time, by the cache writer's
workers; and synthetic data sets written in those exact layouts (`fastload.build.synth_formats`)."""
