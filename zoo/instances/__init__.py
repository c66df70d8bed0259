"""Instance segmentation learned from semantic labels only (issue #10).

Modules:
    pseudo       connected components, clean-component filter, Panoptic-DeepLab targets, copy-paste
    net          Panoptic-DeepLab-lite on the FastDepthSeg encoder (registry task "instance")
    postprocess  centre NMS + grouping by offset votes (numpy; any backend's output)
    tune         grid search of the grouping settings on a validation split
    baselines    connected components (B0) and distance-transform watershed (B1)
    metrics      PQ / SQ / RQ for things (with a "touching" subset) and COCO mask AP
    data         semantic-only training view; true instance ids for evaluation (synthetic, COCO)
    train        python -m zoo.instances.train  (resumable: --resume, mid-epoch)
    evaluate     python -m zoo.instances.evaluate  (learned vs both baselines, mean / std over seeds)

The full experiment (3 seeds on the synthetic scenes, then PQ-things on the touching subset)::

    for s in 0 1 2; do
        python -m zoo.instances.train --data synthetic --seed $s --threads 1 --no-progress --resume
    done
    python -m zoo.instances.tune --data synthetic --split val \\
        --weights artifacts/checkpoints/panoptic_lite_fastdepthseg/synthetic/panoptic_lite-seed{0,1,2}/best.pt
    python -m zoo.instances.evaluate --data synthetic --split test --threads 1 \\
        --weights artifacts/checkpoints/panoptic_lite_fastdepthseg/synthetic/panoptic_lite-seed{0,1,2}/best.pt \\
        --json results/instances_synthetic_test.json
"""
