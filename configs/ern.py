"""ERN-Net on fused 2D lesion slices, the protocol of Gao et al. 2020 (JMIR Med Inform 8:e19805).

`--config=configs/ern.py` is the default job; `--config=configs/ern.py:tiny` runs in seconds.
The inputs are lesion-centred (`data.roi="mask"`); `--config.data.roi=brain` gives whole slices.
"""

from ernjax.defaults import base_config


def get_config(arg: str | None = None):
    """Returns the ERN-Net config; `arg="tiny"` gives a seconds-long smoke run."""
    c = base_config()
    d = c.data
    d.kind = "slices2d"
    d.channels = ("t1", "t2", "t1c")  # Gao Fig. 3a: T1 -> red, T2 -> green, T1c -> blue
    d.reference = "t1"  # Gao: T1c and T2 co-registered to T1
    d.mask_pattern = "*_mask.nii.gz"
    d.shape = (96, 96)
    # How the defaults below were chosen: on the embedded generator's cohort of phantom seed 3,
    # never one the README reports (benchmarks/results/recipe.md; `python -m benchmarks.recipe`),
    # by the test subject / image AUC on that cohort of the epoch chosen on its validation split.
    # Lesion-centred slices (Gao's neurosurgeon marked the lesion slices; Shin 2021 drew
    # rectangular ROIs): a 64 mm box about the mask's lesion, sampled at 96 px (0.67 mm). 0.875 /
    # 0.863 against 0.812 / 0.721 for the whole brain resized to 96 px.
    d.roi = "mask"
    # Gao states N4 and co-registration but no intensity scaling. z-score inside the brain: 0.875
    # / 0.863 against 0.750 / 0.786 with the robust min-max (whose T1c 99.5th percentile falls on
    # enhancing tissue, so the brightness of the whole slice varies with the lesion).
    d.normalize = "zscore"
    # Intensity jitter 0.2: 0.875 / 0.863; 0.1 gave 0.906 / 0.851, the same within one seed's
    # noise, so the earlier value stays.
    d.augment.intensity = 0.2
    d.classes = ("necrosis", "recurrence")  # Gao: 0 = radiation necrosis, 1 = tumor recurrence
    d.split.test = 0.2  # Gao: 80:20 split by patient
    d.synthetic.recurrence_fraction = 0.66  # Gao: 96 recurrence vs 50 necrosis
    c.model.name = "ern_b0"
    c.model.dropout = 0.2
    c.train.batch_size = 32
    c.train.num_epochs = 8
    c.train.optimizer = "adamw"
    # lr 1e-3: 0.875 / 0.863; 2e-3 gave 0.906 / 0.884 with a less steady loss (SD 0.19 against
    # 0.12): within one seed's noise, so the steadier value stays. Balanced sampling (0.844 /
    # 0.840), weight averaging (EMA 0.99: 0.875 / 0.865) and a 3-epoch warmup (0.844 / 0.853)
    # did not help, so the 1-epoch warmup stays and neither of the others is on. The scored
    # checkpoint stays the best by validation image AUC: over the study's 16 runs, the lowest
    # validation loss picked a worse epoch in 9 and a better in 2, the last epoch a worse in 9
    # and a better in 2.
    c.train.learning_rate = 1e-3
    c.eval.positive_class = "recurrence"  # Gao's sensitivity is recurrence recall

    if arg == "tiny":
        d.synthetic.subjects = 12
        d.shape = (32, 32)
        d.roi = "brain"  # whole slices: the smoke tests; tests/test_roi.py runs the mask ROI
        d.augment.enabled = False
        c.model.name = "ern_tiny"
        c.train.batch_size = 8
        c.train.num_epochs = 2
        c.train.log_every_steps = 1
        c.eval.batch_size = 16
    return c
