"""The real sample data fastload ships: 18 photos with 165 hand-drawn polygons (fruits_nuts_coco, MIT).

It lives inside the package (``fastload/data/fruits_nuts_coco``, beside this file) so that a fresh clone or an installed wheel has
real pictures for the tests, the README example and ``fastload demo --data sample``. Its ``README.md`` says where
it comes from; its ``LICENSE`` applies to those files.
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_NAME = "fruits_nuts_coco"


def sample_data() -> Path:
    """The folder of the bundled sample data: ``annotations.json`` (COCO) and ``images/`` (800x600 JPEGs).

    Raises
    ------
    FileNotFoundError
        When the package was installed without its data files (a broken install): reinstall fastload.
    """
    root = Path(__file__).resolve().parent / SAMPLE_NAME
    if not (root / "annotations.json").is_file():
        raise FileNotFoundError(
            f"fastload's sample data is missing from {root}: the package was installed without its data "
            "files; reinstall fastload (pip install --force-reinstall fastload)"
        )
    return root
