"""DALI's errors in fastload's terms: a decoder's failure names the batch's samples; a missing nvCOMP is named."""

from __future__ import annotations

import re

from fastload.errors import CacheError, add_note
from fastload.pipeline.dali.nvcomp import nvcomp_missing


def named_failure(names: list[str], exc: RuntimeError) -> Exception:
    """A DALI error for a batch: a decoder's becomes a CacheError naming the samples; others get a note."""
    text = str(exc)
    if "nvcomp" in text.lower():  # the library is missing or broken: no sample is at fault
        return RuntimeError(nvcomp_missing(f"DALI cannot load it (DALI said: {text.strip().splitlines()[0]})"))
    op = re.search(r"rror in \w+ operator `([^`]+)`", text)
    if op is None or "decoders" not in op.group(1):
        add_note(exc, f"fastload: DALI was processing the samples {', '.join(names)}")
        return exc
    cause = text.split("encountered:", 1)[-1].strip().splitlines()
    # verify decodes with OpenCV: it finds damaged bytes, but passes an image that OpenCV decodes and DALI
    # cannot (the build normalises every such case known, see fastload.cache.images); say both fixes
    return CacheError(
        f"{op.group(1)} failed ({cause[0] if cause else 'no detail'}) on the batch of samples "
        f"{', '.join(names)}: a member of one of them does not decode. Run `fastload cache verify` on the "
        "cache: if it names a sample, its bytes are damaged; rebuild its shard with `fastload cache build ... "
        "--resume`. If verify passes, OpenCV decodes the image and DALI cannot, and rebuilding changes nothing: "
        "re-encode that image file (e.g. as PNG) and rebuild with --resume, and report it to fastload with the "
        "file (a sample key is the image's position in the COCO images list; "
        "`open_cache(CACHE)[i]['meta']['file_name']` names the file of cache index i)"
    )
