"""Every method's per-volume sampler (picklable, run in DataLoader workers): the overlapping
patches of PiMPiC (:mod:`.overlap`), VoCo's grid of base crops (:mod:`.voco`), vox2vec's crop
pairs (:mod:`.vox2vec`), and what they share (:mod:`.common`)."""
