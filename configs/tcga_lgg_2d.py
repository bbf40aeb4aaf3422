"""Real-data benchmark: WHO grade G2 vs G3 on TCGA-LGG fused 2D lesion slices, ERN-Net.

`../shared/data/tcga_lgg_grade_2d` (Buda et al.; 110 patients, 128 x 128 axial stacks with T1,
FLAIR and T1c, a FLAIR-abnormality mask). The recipe is Gao et al. 2020's (fused RGB lesion slices,
subject-wise mean of slice probabilities); the channels are what this set has (no T2), and the one
patient without a grade is skipped and recorded. `arg="resnet18"` swaps in the 2D ResNet-18
baseline. Point `--config.data.cohort_dir` elsewhere if the folder lives somewhere else.
"""

from pathlib import Path

from ernjax.defaults import base_config

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "tcga_lgg_grade_2d"


def get_config(arg: str | None = None):
    """Returns the TCGA-LGG grading config (`arg`: "resnet18" for the ResNet baseline)."""
    c = base_config()
    d = c.data
    d.cohort_dir = str(DEFAULT_DIR)
    d.kind = "slices2d"
    d.modalities = {"t1": "*_t1.nii.gz", "flair": "*_flair.nii.gz", "t1c": "*_t1c.nii.gz"}
    d.channels = ("t1", "flair", "t1c")  # the source's own RGB order (Buda et al.)
    d.reference = "flair"
    d.mask_pattern = "*_mask.nii.gz"  # lesion slices = slices the FLAIR mask touches
    d.shape = (128, 128)  # the stored resolution
    d.classes = ("G2", "G3")
    d.on_error = "skip"  # one patient has grade NA: skipped and recorded in the metadata
    d.split.test = 0.2  # Gao: 80:20 by patient
    c.model.name = "ern_b0"
    c.model.dropout = 0.2
    c.train.batch_size = 32
    c.train.num_epochs = 10
    c.train.learning_rate = 1e-3
    c.eval.positive_class = "G3"
    if arg == "resnet18":
        c.model.name = "resnet18"
        c.model.dropout = 0.0
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use '' or 'resnet18'")
    return c
