"""ssd_tutorial: SSD (Liu et al., 2016) step by step.

One module per concept, named after its chapter of the book: ``boxes``, ``default_boxes``,
``matching``, ``model``, ``loss``, ``hard_negative_mining``, ``data``, ``augmentation``,
``inference``, ``evaluation``, ``config``, ``train``; ``viz`` holds the plotting helpers.
Import what you need from its module, e.g. ``from ssd_tutorial.matching import match``.
"""

__version__ = "0.1.0"
