"""What a build reads: one data set in one of three formats (`BuildInput`), loaded as a `LabelDataset`.

=================  ===========================================  ===============================================
format             `build_cache` / ``fastload cache build``     reader; things and stuff
=================  ===========================================  ===============================================
``coco``           ``coco=JSON, images=DIR``                    `fastload.build.coco.load_coco` through
                   (``--coco --images``)                        `fastload.build.coco_instances.from_coco`; the
                                                                cache config's ``things:`` (default: all things)
``coco_panoptic``  ``panoptic=JSON, panoptic_masks=PNG_DIR,     `fastload.build.coco_panoptic.load_coco_panoptic`;
                   images=DIR`` (``--panoptic --panoptic-masks  the file's ``isthing``
                   --images``)
``cityscapes``     ``cityscapes=ROOT, cityscapes_split=SPLIT``  `fastload.build.cityscapes.load_cityscapes`; the
                   (``--cityscapes ROOT --split SPLIT``);       label table's ``hasInstances``
                   images under ``ROOT`` (or ``images=``)
=================  ===========================================  ===============================================

Every format goes through the same writer and gives the same schema-2 cache; crowd regions follow fastload's rule
(`fastload.build.sources`: 255 = ignore, never an instance). The manifest's ``source`` records the format and the
sha256 of the annotations (`BuildInput.manifest_source`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastload.build.rules import OnError
from fastload.build.sources import LabelDataset
from fastload.cache.manifest import SOURCE_FORMATS
from fastload.errors import AnnotationError, ConfigError, ImageError

__all__ = ["SOURCE_FORMATS", "BuildInput", "select_input"]
ONE_SOURCE = (
    "pass one data set: coco= (--coco) with images=, panoptic= and panoptic_masks= (--panoptic, --panoptic-masks) "
    "with images=, or cityscapes= (--cityscapes ROOT)"
)


@dataclass(frozen=True)
class BuildInput:
    """One data set to build a cache of (`select_input` makes it from `build_cache`'s arguments).

    annotations : the COCO instances JSON, the COCO panoptic JSON, or the Cityscapes root
    image_root : the folder the records' ``file_name``s are relative to
    masks : the panoptic PNG folder (``coco_panoptic`` only)
    split : the Cityscapes split, "train", "val" or "test" (``cityscapes`` only)
    """

    format: str
    annotations: Path
    image_root: Path
    masks: Path | None = None
    split: str | None = None

    def load(self, *, on_error: OnError, things: Sequence[int | str] | None) -> LabelDataset:
        """Read and validate the annotations (images are read later, by the writer).

        Raises
        ------
        AnnotationError
            The annotations (or the PNG folder) do not exist; or as the format's reader.
        ConfigError
            ``things`` for a format that says itself which classes are things; an unknown entry of ``things``;
            Cityscapes without the ``cityscapesscripts`` package.
        """
        self.check_paths()
        if things is not None and self.format != "coco":
            says = "each category's isthing" if self.format == "coco_panoptic" else "its label table's hasInstances"
            raise ConfigError(
                f"the cache config sets things: {list(things)}, but a {self.format} data set says which classes are "
                f"things itself ({says}); remove things: from the config"
            )
        if self.format == "coco":
            from fastload.build.coco import load_coco
            from fastload.build.coco_instances import from_coco

            return from_coco(load_coco(self.annotations, on_error=on_error), things=things)
        if self.format == "coco_panoptic":
            from fastload.build.coco_panoptic import load_coco_panoptic

            return load_coco_panoptic(self.annotations, self.masks, on_error=on_error)
        from fastload.build.cityscapes import load_cityscapes

        try:
            return load_cityscapes(self.annotations, split=self.split, on_error=on_error)
        except ImportError as exc:
            raise ConfigError(f"{exc} (pip install 'fastload[cityscapes]')") from None

    def check_paths(self) -> None:
        """The annotations (and the PNG folder) exist: an AnnotationError naming the path and flag otherwise; the
        image folder exists: an ImageError."""
        what = {"coco": ("COCO instances JSON", "--coco"), "coco_panoptic": ("COCO panoptic JSON", "--panoptic")}
        if self.format in what and not self.annotations.is_file():
            name, flag = what[self.format]
            raise AnnotationError(f"{name} {str(self.annotations)!r} does not exist or is not a file; pass its path ({flag})")
        if self.format == "coco_panoptic" and not self.masks.is_dir():
            raise AnnotationError(
                f"panoptic PNG folder {str(self.masks)!r} does not exist; pass the folder the annotations' PNG "
                "file_names are relative to (--panoptic-masks)"
            )
        if self.format == "cityscapes" and not self.annotations.is_dir():
            raise AnnotationError(
                f"Cityscapes root {str(self.annotations)!r} does not exist; pass the folder that holds gtFine/ and "
                "leftImg8bit/ (--cityscapes)"
            )
        if not self.image_root.is_dir():
            raise ImageError(
                f"image folder {str(self.image_root)!r} does not exist; pass the folder the file_names of "
                f"{self.annotations} are relative to"
            )

    def manifest_source(self, dataset: LabelDataset) -> dict[str, Any]:
        """The manifest's ``source``: the format, ``coco_sha256`` (the sha256 of the annotations as ``dataset``'s
        reader read them: the JSON file; for Cityscapes, the split's polygon files, each by its path and sha256),
        and the Cityscapes split."""
        if self.format == "cityscapes":
            return {"format": self.format, "split": self.split, "coco_sha256": dataset.source_sha256}
        return {"format": self.format, "coco_sha256": dataset.source_sha256}


def select_input(
    *,
    coco: str | Path | None,
    panoptic: str | Path | None,
    panoptic_masks: str | Path | None,
    cityscapes: str | Path | None,
    cityscapes_split: str | None,
    images: str | Path | None,
) -> BuildInput:
    """The `BuildInput` that `build_cache`'s source arguments name; a ConfigError that says the fix otherwise."""
    given = [name for name, value in (("coco", coco), ("panoptic", panoptic), ("cityscapes", cityscapes)) if value is not None]
    if len(given) != 1:
        raise ConfigError(f"{'no data set given' if not given else 'several data sets given: ' + ', '.join(given)}; {ONE_SOURCE}")
    if (panoptic is None) != (panoptic_masks is None):
        raise ConfigError(
            "COCO panoptic needs both its JSON and its PNG folder: panoptic= and panoptic_masks= (--panoptic JSON "
            "--panoptic-masks PNG_DIR)"
        )
    if cityscapes_split is not None and cityscapes is None:
        raise ConfigError(
            f"cityscapes_split={cityscapes_split!r} names a Cityscapes split, but no Cityscapes root is given "
            "(cityscapes=, --cityscapes ROOT); to hold out a fraction of the images use split={'val': 0.1} "
            "(--split val=0.1)"
        )
    if cityscapes is not None:
        from fastload.build.cityscapes import SPLITS

        split = "train" if cityscapes_split is None else cityscapes_split
        if split not in SPLITS:
            raise ConfigError(f"the Cityscapes split must be one of {list(SPLITS)}, got {split!r}")
        root = Path(cityscapes)
        return BuildInput("cityscapes", root, Path(images) if images is not None else root, split=split)
    if images is None:
        flag = "--coco" if coco is not None else "--panoptic"
        raise ConfigError(f"pass the image folder too (images=, --images DIR) with {flag}: the folder its file_names are relative to")
    if coco is not None:
        return BuildInput("coco", Path(coco), Path(images))
    return BuildInput("coco_panoptic", Path(panoptic), Path(images), masks=Path(panoptic_masks))
