"""The label conventions every stage shares, defined once.

============================  =====  ===========================================================================
name                          value  meaning
============================  =====  ===========================================================================
`BACKGROUND`                  0      semantic train id of pixels of no object (a class: ``classes[0]``)
`IGNORE`                      255    semantic label of pixels no loss may use: crowd regions, outside the image
                                     after a warp; not a class (``ignore_index=255``)
`SEMANTIC_FILL`               255    what a warp writes into the semantic mask outside the source: `IGNORE`
`INSTANCE_FILL`               0      what a warp writes into the instance mask outside the source: no instance
`MAX_INSTANCES`               32767  instance ids 1..32767 per image: the int16 that DALI's warp reads the uint16
                                     member as
`MAX_CLASSES`                 254    train ids 1..254 (0 background, 255 ignore)
============================  =====  ===========================================================================
"""

from __future__ import annotations

BACKGROUND = 0
IGNORE = 255
SEMANTIC_FILL = IGNORE
INSTANCE_FILL = 0
MAX_INSTANCES = 32767
MAX_CLASSES = 254
BACKGROUND_NAME = "__background__"
