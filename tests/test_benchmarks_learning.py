"""benchmarks.recipe and benchmarks.learning: the rules and poolings their tables rest on
(benchmarks.learning pools with `crossval.ensemble_predictions` and `crossval.concat`)."""

import numpy as np
import pytest

from benchmarks import recipe
from ernjax.evaluate.predictions import Predictions
from ernjax.studies import crossval

CLASSES = ("necrosis", "recurrence")


def _epochs(val_auc, val_loss, test_auc):
    return [
        recipe.Epoch(10 * (i + 1), a, a, loss, t, t)
        for i, (a, loss, t) in enumerate(zip(val_auc, val_loss, test_auc, strict=True))
    ]


def test_checkpoint_rules_read_validation_only():
    # Test AUCs are chosen to be best where validation is worst: no rule may follow them.
    epochs = _epochs(
        val_auc=[0.6, 0.9, 0.5, 0.8, 0.85],
        val_loss=[0.7, 0.5, 0.4, 0.6, 0.45],
        test_auc=[0.99, 0.1, 0.2, 0.3, 0.4],
    )
    assert recipe.choose(epochs, "val image AUC").step == 20
    assert recipe.choose(epochs, "val loss").step == 30
    assert recipe.choose(epochs, "last").step == 50
    # Mean of each epoch and the one before: 0.6, 0.75, 0.7, 0.65, 0.825.
    assert recipe.choose(epochs, "smoothed val AUC").step == 50
    # An AUC saturated on a small validation split: the tie goes to the lower loss (epoch 3).
    tied = _epochs([1.0, 0.9, 1.0, 1.0], [1.1, 0.5, 0.3, 0.35], [0.6, 0.99, 0.5, 0.9])
    assert recipe.choose(tied, "val image AUC").step == 10
    assert recipe.choose(tied, "val image AUC, ties by loss").step == 30
    nan_first = _epochs([float("nan"), 0.7], [1.0, 1.0], [0.5, 0.5])
    assert recipe.choose(nan_first, "val image AUC").step == 20  # undefined is never best
    assert recipe.choose(nan_first, "val image AUC, ties by loss").step == 20
    with pytest.raises(ValueError):
        recipe.choose(epochs, "test AUC")


def test_variant_overrides_reach_nested_fields():
    c = recipe.make_config("2d", "mask roi, jitter 0.1", phantom_seed=3, seed=1)
    assert c.data.roi == "mask" and c.data.augment.intensity == 0.1
    assert c.data.synthetic.seed == 3 and c.seed == 1
    assert c.train.keep_checkpoints > c.train.num_epochs  # every epoch is kept to be scored
    c = recipe.make_config("3d_brain", "batchnorm", phantom_seed=3, seed=0)
    assert c.data.roi == "brain" and not c.data.mask_pattern


def _preds(ids, labels, p):
    p = np.asarray(p, float)
    return Predictions(list(ids), np.asarray(labels), np.stack([1 - p, p], 1), CLASSES)


def test_pooling_keeps_cohorts_apart_and_averages_seeds():
    a = _preds(["s1", "s1", "s2"], [1, 1, 0], [0.8, 0.6, 0.3])
    b = _preds(["s1", "s1", "s2"], [1, 1, 0], [0.6, 0.4, 0.5])
    mean = crossval.ensemble_predictions([a, b], positive=1, method="mean")
    np.testing.assert_allclose(mean.probs[:, 1], [0.7, 0.5, 0.4])
    both = crossval.concat([mean, mean])
    assert len(both) == 6 and both.label.tolist() == [1, 1, 0, 1, 1, 0]
