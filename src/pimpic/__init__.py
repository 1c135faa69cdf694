"""pimpic: overlap-aware self-supervised pretraining (PiM + PiC) for 3D medical segmentation.

The method lives in small pure modules (``geometry``, ``losses``); the data path in ``data``;
networks in ``models``; pretext tasks in ``methods``; the training loop in ``engine``.
"""

__version__ = "0.1.0"
