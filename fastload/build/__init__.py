"""The offline stage, run once: COCO → validated records → masks and instance tables → tar shards (the cache)."""
