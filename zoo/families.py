"""Imports every family module so each registers its entries. Add new families here."""
from zoo.det import yolov5  # noqa: F401
from zoo.seg import (  # noqa: F401
    bisenetv2,
    ddrnet,
    deeplabv3plus,
    efficientps,
    espnet,
    fastdepthseg,
    liteseg,
    pidnet,
    ppliteseg,
)
from zoo.instances import net as instance_net  # noqa: F401
