"""Detection: network families (YOLOv5), the restricted importer for pickled-module checkpoints,
post-processing (NMS) and COCO evaluation."""
