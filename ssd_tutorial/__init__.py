"""ssd_tutorial: SSD (Liu et al., 2016) step by step.

Import what you need from its module: ``from ssd_tutorial.matching import match``.  The
modules form layers; each imports only from its own layer or below, and nothing imports
a command-line module (``tests/test_architecture.py`` checks it).

L0, no torch
    files             file digests for the package and its scripts
    cli               the command-line tools' error policy and number flags
L1, the teaching core (one chapter each)
    boxes             box formats and IoU (ch.01)
    default_boxes     the 8732 default boxes and their layouts (ch.02)
    matching          which default box answers for which object; encode/decode (ch.03)
    model             SSD300 / SSD512: VGG16, six source maps, two heads (ch.04)
    backbone_weights  ImageNet VGG16 weights: sources, key maps, input convention
    loss              the multibox loss (ch.05)
    hard_negative_mining  which background boxes the loss sees (ch.06)
    augmentation      the paper's augmentation: zoom out, crop, flip (ch.07)
    photometric       the photometric distortions (ch.07)
    preprocessing     resize and normalization; a model's input transform
    inference         from scores to detections; Predictor (ch.08)
    nms               the three forms of class-aware NMS (appendix A)
    evaluation        VOC AP and COCO AP, exactly (ch.09)
    viz               the chapters' plotting helpers
L2, images and datasets
    imageio           image decoding (three decoders, one result), JPEG codecs
    data              VOC folders, batching; re-exports the datasets below
    shapes            the synthetic ShapesDataset
    coco              COCO-format JSON files
    own_data          your own data: open, split, check (ch.11)
    gpu_augmentation  the training augmentation, batched on the GPU
L3, weights and the loaded detector
    checkpoint        atomic, verified, weights_only checkpoints
    published         published weight files: registry, cache, download, checksums
    pretrained        other projects' layouts converted into SSD300
    detector          one Detector type and one loader (checkpoint, name or file)
    onnx_export       ONNX export with optional post-processing, checked
L4, training and evaluation machinery
    config            TrainConfig and its presets (ch.10)
    sampling          the data order as a function of (seed, iteration)
    optim             optimizer and learning-rate schedule
    recipes           what a config stands for: datasets, model, starting weights
    rundir            the run folder: guard, metrics, logs
    validate          collect detections, score them (VOC, COCO)
    train_setup       process group, device, precision, wrapping, loader
    trainer           the Trainer and its loop
    video             detection on video files
L5, command-line tools (``python -m ssd_tutorial.<tool>``)
    train, evaluate, detect, export
"""

__version__ = "0.1.0"
