"""The full config tree with generic defaults; `configs/*.py` set the paper protocols on top.

Every field a module reads is declared here, so `--config.x.y=...` overrides fail loudly on typos.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """Returns the config tree shared by every protocol (generic values, no paper defaults)."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = d = ml_collections.ConfigDict()
    d.cohort_dir = ""  # "" = the embedded synthetic cohort, written under WORKDIR/synthetic_cohort
    d.records_dir = ""  # "" = WORKDIR/records
    d.kind = "slices2d"  # "slices2d" (an example per lesion slice) or "volumes3d" (per subject)
    # Modality name -> glob relative to the subject folder; exactly one file must match.
    d.modalities = {
        "t1": "*_t1.nii.gz",
        "t1c": "*_t1c.nii.gz",
        "t2": "*_t2.nii.gz",
        "flair": "*_flair.nii.gz",
    }
    d.mask_pattern = ""  # glob of a lesion mask, "" for none
    # "patterns": labels.csv + the globs above; "bids": a BIDS folder (participants.tsv,
    # sub-<id>/[ses-<s>/]anat/), read by `bids` below instead (ernjax.data.bids says how).
    d.layout = "patterns"
    d.bids = ml_collections.ConfigDict(
        dict(
            label_column="diagnosis",  # participants.tsv column of the labels ("n/a": none)
            # "first" / "last": one session per participant (natural order of the labels);
            # "all": every session its own example, sub-<id>_ses-<s>, a participant's sessions
            # kept in one split (group_column participant_id); or one label, "02" or "ses-02".
            session="first",
            # Modality name -> BIDS query [key-value_]...suffix; a query without ce- never
            # matches a contrast-enhanced file, so T1w is the plain T1.
            modalities={"t1": "T1w", "t1c": "ce-*_T1w", "t2": "T2w", "flair": "FLAIR"},
            mask="",  # BIDS query of the lesion mask, e.g. "label-lesion_mask"; "" for none
            mask_dir="derivatives/*",  # where the masks' sub-<id>/[ses-<s>/]anat/ are (a glob)
            run="",  # several runs of a modality: "" stops the subject; "first" or "last"
        )
    )
    d.slices_column = ""  # labels.csv column with lesion slice indices ("12;13;14"), "" for none
    # labels.csv values; the position is the class index. Left at this default on a cohort whose
    # labels.csv has exactly two other values, the classes become those two in sorted order
    # (logged with the positive class), and eval.positive_class must name one of them
    # (ernjax.data.check, before any work). Quote tuples on the command line:
    # --config.data.classes="('HGG','LGG')" (HGG,LGG is split on the commas too).
    d.classes = ("necrosis", "recurrence")
    d.channels = ("t1", "t2", "t1c")  # modalities, in channel order
    d.reference = "t1"  # modality whose grid the others are resampled onto
    d.spacing = ()  # (x, y, z) mm in canonical RAS; () keeps the reference spacing
    d.shape = (96, 96)  # output shape: (H, W) for slices2d, (D, H, W) for volumes3d
    # Per channel, inside the non-zero (brain) region: "minmax" to [0, 1] (Ying 2025), "zscore",
    # or "whitestripe" (Shinohara 2014, Shin 2021: the channel's white-matter stripe at mean 0 and
    # SD 1, found by its contrast, so each channel must be named t1/t1n/t1w/t1c/t1ce/t1gd, t2/t2w
    # or flair/t2f; a T1c takes the T1 rule: ernjax.data.whitestripe).
    d.normalize = "minmax"
    d.on_error = "raise"  # "raise" or "skip" (skips are logged and recorded in the metadata)
    # Lesion-centred inputs (issue 16 item 2; Shin 2021 drew rectangular ROIs, Gao 2020 marked
    # lesion slices). "brain": the whole brain's bounding box, resized to `shape` (as before);
    # "mask": a box of `roi_size_mm` centred on the centre of the lesion mask's bounding box;
    # "centre": the same box centred on a per-subject point in labels.csv (`centre_column`).
    # One fixed physical box, not "bounding box + margin resized to shape": the voxel size is
    # then roi_size_mm / shape for every subject (e.g. 64 mm / 32 = 2 mm), so lesions keep their
    # true size relative to each other instead of every lesion being stretched to fill the input,
    # and a reader's click (no mask, no extent) gives the same input as a mask. The margin in mm
    # is the box's: choose roi_size_mm to hold the largest lesion plus the context wanted.
    # slices2d: the box's x, y extent is sampled at (H, W) = shape; the axial slices stay the
    # acquired ones, and only lesion slices within the box's z extent are kept. volumes3d: the
    # box is sampled at (D, H, W) = shape. Parts of the box outside the scan are zeros.
    d.roi = "brain"
    d.roi_size_mm = (64.0, 64.0, 64.0)  # (x, y, z) mm of the ROI box (roi "mask" or "centre")
    d.centre_column = ""  # labels.csv column with the lesion centre "x;y;z", world mm (RAS+)
    d.mask_channel = False  # True: the lesion mask (0/1) is appended as the last channel, "mask"
    # Raw scans -> preprocessed cohort (ernjax.preprocess; `python -m ernjax.preprocess`).
    d.preprocess = ml_collections.ConfigDict(
        dict(
            # Subset of ("reorient", "n4", "coregister", "mni", "skullstrip", "normalize", "crop"),
            # run in that order; () = the cohort is used as it is.
            steps=(),
            # Co-registration reference: the first modality present (Gao 2020: T1; Ying 2025:
            # ("t1c", "t1", "t2", "flair")).
            reference_priority=("t1", "t1c", "t2", "flair"),
            n4_shrink=4,  # N4 fits on the image shrunk by this factor (seconds, not minutes)
            n4_iterations=(50, 50, 30),  # N4 iterations per fitting level
            registration_iterations=100,  # optimizer iterations per resolution level (4, 2, 1)
            registration_sampling=0.05,  # fraction of voxels sampled by the MI metric
            min_mutual_information=0.05,  # nats; below it the images do not overlap (failure)
            template_resolution=2,  # mm, nilearn's MNI152 2009 template: 1 or 2
            template_mask_threshold=0.2,  # template intensity (0-1) counted as brain (nilearn's)
            skullstrip="atlas",  # "atlas" (template mask carried back) or a learned method's name
            skullstrip_weights="",  # weights of a learned skull-stripping method
            # "minmax" (robust, to [0, 1]), "zscore" or "whitestripe" (by each modality's name, as
            # config.data.normalize), inside the brain (the skullstrip mask, else non-zero voxels).
            normalize="minmax",
            crop_margin=4,  # voxels kept around the brain by the "crop" step
            dicom_map="",  # CSV series_description,modality (or JSON) overriding the guesses
            dicom_min_slices=32,  # series with fewer slices are reported (Ying 2025 excluded them)
            # A corrupt DICOM file refuses its subject; True: its series is converted without it
            # (a missing inner slice interpolated from its neighbours) and the file is reported.
            dicom_skip_corrupt_slices=False,
            qc=True,  # per-subject QC PNGs and an index, outliers first
        )
    )
    # Stratified, by-patient split: test and validation fractions of each class, k folds, seed.
    # `file`: a split file (subject_id,group,split,fold, as every run writes to WORKDIR/split.csv)
    # that fixes each listed subject's split and fold; "" = split by the fractions and the seed
    # (ernjax.data.split_file says what happens to subjects added or removed since).
    d.split = ml_collections.ConfigDict(dict(test=0.2, validation=0.2, folds=5, seed=0, file=""))
    # labels.csv column (e.g. "patient_id") whose equal values keep subjects (scans, sessions of
    # one patient) in one split and one fold; "" = each subject is its own group.
    d.group_column = ""
    d.fold = -1  # -1: train/validation as built; k >= 0: fold k of train+validation validates
    d.augment = ml_collections.ConfigDict(
        dict(enabled=True, flip=True, rotate_deg=10.0, scale=0.1, intensity=0.1)
    )
    d.worker_count = 0  # Grain worker processes (0 = in the main process)
    # Processes loading subjects while building records (the same records with any number);
    # 1: the build process alone. 0: the free cores (those the 1-minute load average leaves),
    # when the first two subjects' time says a pool saves more than the ~1.5 s its workers take
    # to start, else 1 (ernjax.data.loading). Chosen from benchmarks/results/build_workers.md
    # (2-core CPU): idle, 2 workers loaded 1.6x the subjects/s of 1 on the embedded cohort,
    # 1.2x on BraTS 2 mm 2D, 1.1x on 3D and 0.9x on the 12-subject tiny cohort (1.5 s in all);
    # kept busy by other work (load 8), 0.6-1.0x on all four. The default follows both.
    d.build_workers = 0
    # The synthetic cohort (ernjax.data.synthetic), used when cohort_dir is "".
    d.synthetic = ml_collections.ConfigDict(
        dict(subjects=60, seed=0, difficulty=0.5, recurrence_fraction=0.66, slice_thickness=0.0)
    )

    c.model = m = ml_collections.ConfigDict()
    m.name = "ern_b0"
    m.num_classes = 2
    m.dropout = 0.2
    # Normalization layers: "batch" (BatchNorm, every paper's), "group" (GroupNorm, <= 32 groups)
    # or "instance"; the last two do not depend on the batch (ernjax.models.layers.norm_layer).
    m.norm = "batch"
    # Pretrained weights: a PyTorch state dict (MONAI, MedicalNet, torchvision layouts) or an
    # ernjax run directory; "" = random init. See ernjax/models/pretrained.py.
    m.init_from = ""

    c.train = t = ml_collections.ConfigDict()
    t.batch_size = 32  # global batch, split over all devices of all processes
    t.num_epochs = 10
    t.optimizer = "adamw"  # "adam" or "adamw"
    t.learning_rate = 1e-3
    t.schedule = "cosine"  # "cosine" (linear warmup then cosine decay) or "constant"
    t.warmup_epochs = 1.0
    t.weight_decay = 1e-4
    t.grad_clip = 1.0  # global-norm clip, 0 to disable
    t.class_weights = ()  # () = n_total / (n_classes * n_class) from the training split
    # What n counts for those default weights: "images" (slices or volumes: each class then
    # weighs the same in the loss, which sums over images) or "subjects" (patients: Gao 2020's
    # 1.5 / 0.75 come from its 96 recurrence vs 50 necrosis patients). "images" balances the
    # loss the network is trained on when the classes have different numbers of lesion slices.
    t.class_weight_counts = "images"
    # "shuffle": every training example once per pass, the loss class-weighted (class_weights);
    # "balanced": examples drawn so that each class is equally frequent (the rarer classes'
    # examples repeated), the loss unweighted unless class_weights is given. An epoch is the
    # same number of examples either way.
    t.sampling = "shuffle"
    # > 0: an exponential moving average of the weights (and BatchNorm statistics) with this
    # decay, warmed up as min(decay, (1 + step) / (10 + step)); validation, checkpoint
    # selection, the final scores and predict then use the averaged weights. 0 = off.
    t.ema_decay = 0.0
    # Compute dtype: "float32" or "bfloat16" (parameters stay float32). bfloat16 is for GPUs/TPUs:
    # on CPUs the run computes in float32 and logs it (train.steps.compute_dtype).
    t.dtype = "float32"
    # The validation metric that picks the best step, counts for early stopping and is kept as
    # the "best" checkpoint: a key of the flat validation results, "image.auc" (what ernjax
    # selected by before this field existed), "subject.auc", ..., or "loss" (class-weighted;
    # lower is better). The names allowed: ernjax.checkpoints.SELECTABLE. Ties go to the lower
    # validation loss, then the earlier epoch (ernjax.checkpoints.SelectMetric): on a validation
    # split of a few subjects the AUC often reaches 1.0 at a barely trained epoch and stays.
    t.select_metric = "image.auc"
    t.early_stopping_patience = 0  # epochs without select_metric gain before stopping; 0 = off
    # Which checkpoint is scored at the end: "best" by select_metric, or the "last" one. "last"
    # keeps the validation split untouched by model selection, so that its metrics (and pooled
    # out-of-fold metrics in cross-validation) are unbiased; use it when there is no test split.
    t.select_checkpoint = "best"
    t.log_every_steps = 10
    t.checkpoint_every_steps = 0  # 0 = at the end of every epoch only
    t.keep_checkpoints = 3

    c.eval = e = ml_collections.ConfigDict()
    e.batch_size = 64
    e.positive_class = "recurrence"  # printed beside every sensitivity/specificity
    # 95 % CIs. Subject-level rows (one row per patient, independent): proportions by ci_method
    # ("wilson", "wilson_cc", "exact" Clopper-Pearson, "wald"), AUC by auc_ci ("delong", or
    # "bootstrap" over subjects), F1 by the subject bootstrap.
    e.ci_method = "wilson"
    e.auc_ci = "delong"
    # Image-level rows: the slices of one patient are correlated, so every image metric's interval
    # by default resamples subjects ("subject_bootstrap": percentile, stratified by class, a
    # subject's slices together; n_bootstrap replicates). "independent" applies ci_method and
    # auc_ci as if each slice were its own patient: too narrow, kept for older papers' tables
    # (benchmarks/clustered_ci.py measures both: benchmarks/results/clustered_ci.md).
    e.image_ci = "subject_bootstrap"
    e.subject_method = "mean"  # "mean" (Gao), "predictive_index" (Shin), "majority"
    e.tune_threshold = False  # True: image cut-off by Youden's J on validation (never on test)
    # "logistic": recalibrate the positive-class probability as sigmoid(a + b logit p), a and b
    # fitted on the validation predictions only, before the cut-offs are chosen on them; test and
    # predict then see recalibrated probabilities (ernjax.evaluate.calibration). "none" (the
    # default): Gao 2020, Shin 2021 and Ying 2025 report the networks' own probabilities, and a
    # fit on the handful of validation patients a split leaves is noisy (slices of a patient are
    # no independent cases). Calibration is reported either way (calibration.md).
    e.recalibrate = "none"
    e.n_bootstrap = 1000
    e.confidence = 0.95
    # Readers' decisions to set against the model's on the test subjects (Gao 2020 Table 5,
    # Fig. 4b): a CSV reader,subject_id,decision[,confidence], decision a class name or 1/0 for
    # positive_class / not it (ernjax.evaluate.readers). Checked before training; the run's
    # report (and `compare`) write readers.md/.json and draw the readers on the subject ROC.
    # "" = none; `python -m ernjax.report --readers=FILE` adds them to a finished run.
    e.readers_csv = ""
    return c
