"""nnU-Net interoperability: pretrain nnU-Net's encoders, on nnU-Net's data, for nnU-Net.

* :mod:`~pimpic.nnunet.plans` — a plans file's configuration and its encoder pyramid;
* :mod:`~pimpic.nnunet.network` — the network built by nnU-Net's own code, its encoder as a
  backbone (``backbone: nnunet``);
* :mod:`~pimpic.nnunet.data` — a preprocessed folder as a pretraining data source;
* :mod:`~pimpic.nnunet.export` — ``pimpic export nnunet``: a checkpoint
  ``nnUNetv2_train -pretrained_weights`` loads.

``nnunetv2`` is an optional dependency (``pip install 'pimpic[nnunet]'``), imported only where a
network is built or a checkpoint checked.
"""
