"""ernjax: glioma recurrence vs radiation necrosis from routine MRI, in JAX/Flax.

The modules, in data-flow order (each package's own docstring lists its modules):

preprocess/   offline raw-scan steps: DICOM -> NIfTI (dcm2niix), N4, registration, MNI152, skull
              strip, QC pages; `python -m ernjax.preprocess`
data/         cohort on disk -> records -> batches: check (the config against labels.csv), cohort,
              geometry, spec (the example schema and the records' cache key), samples, splits,
              split_file, builder (TFDS), records, prepare, pipeline (Grain), synthetic (the
              embedded phantom cohort)
models/       every network by name (ERN-Net, ResNet, DenseNet, VGG, Inception) for 2D and 3D,
              PyTorch weight conversion, CPU fast paths
baselines/    radiomics: IBSI features in the lesion mask and a regularized logistic regression
train/        objective, jit-compiled data-parallel steps, the training loop, console and
              TensorBoard logs, outputs (a finished run's tables, config and figures)
checkpoints   Orbax checkpoints, resume, and the one rule for which checkpoint is a run's model
evaluate/     stats (CIs, DeLong, bootstrap), calibration (Brier, intercept and slope, decision
              curves), scoring (positive class, cut-offs: one policy), predictions (CSV), reporting
              (tables, ROC figures, JSON), run_report (WORKDIR/report.html), readers (clinicians'
              decisions against the model's: McNemar, Gao 2020's t tests, ROC points)
gradcam       Grad-CAM maps for any model, PNG overlays and NIfTI maps on the scan's grid
inference     a trained run on a new patient: probabilities, decision, Grad-CAM
studies/      runs of several trainings on the same patients: crossval, compare, repeat
              (and external: a finished run, or its folds' ensemble, on another cohort)
atomic, errors, orbax_logs, defaults
              outputs written whole or not at all; errors worded for a researcher and one-line
              command-line errors; Orbax's log noise scoped; the full config tree

Command-line entry points, each a thin wrapper over the library: `main` (train and evaluate),
`predict`, `crossval`, `compare`, `repeat`, `external`, `report`, `preprocess`,
`data.synthetic`, `baselines.radiomics`.
"""
