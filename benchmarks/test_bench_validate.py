"""What the checks of every read cost (`fastload.cache.validate.checked_sample`), beside the meta parse a read
did before they existed.

Run: ``pytest benchmarks/test_bench_validate.py --benchmark-only --benchmark-columns=median``; per sample = the
pass's time / the samples (18 real 800x600 photos, 32 synthetic 512x512 images; ``extra_info["us_per_sample"]``
holds it from the mean).
"""

from __future__ import annotations

from fastload.cache import format as fmt


def _stored(cache) -> list[tuple]:
    """Each sample's members as stored (the meta as its bytes), its size and image id."""
    out = []
    for i in range(len(cache)):
        m = cache.read_members(i)
        out.append((m, fmt.dumps_canonical(m.meta), cache.image_size(i), cache.image_id(i)))
    return out


def test_checked_sample(benchmark, cache):
    """The checks every read runs before any decoder sees a sample (`fastload.cache.validate.checked_sample`:
    image header size, both label headers, the meta parsed within bounds and checked). The meta's parse was part
    of every read before the checks existed: `test_meta_parse` is that part alone."""
    from fastload.cache.validate import checked_sample

    stored = _stored(cache)

    def each() -> None:
        for m, meta, hw, image_id in stored:
            checked_sample(image=m.image, semantic=m.semantic, instance=m.instance, meta=meta, hw=hw, image_id=image_id)

    benchmark(each)
    benchmark.extra_info["us_per_sample"] = 1e6 * benchmark.stats.stats.mean / len(stored)


def test_meta_parse(benchmark, cache):
    """The plain ``json.loads`` of the meta member, what a read did before `test_checked_sample`'s checks."""
    import json

    stored = _stored(cache)

    def each() -> None:
        for _, meta, _, _ in stored:
            json.loads(meta.decode("utf-8"))

    benchmark(each)
    benchmark.extra_info["us_per_sample"] = 1e6 * benchmark.stats.stats.mean / len(stored)
