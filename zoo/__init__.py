"""Edge-vision model zoo: networks, datasets, FP32 training and evaluation.

    import zoo
    zoo.list_models()                      # registered networks
    net = zoo.build("ddrnet", num_classes=11)
    loaded = zoo.load("espnet", weights="espnet_p_2_q_8_camvid.pth", dataset="camvid")
"""
from zoo.api import VARIANTS, load, load_fp32
from zoo.registry import build, get_entry, list_models

__all__ = ["VARIANTS", "build", "get_entry", "list_models", "load", "load_fp32"]
