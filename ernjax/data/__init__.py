"""The data flow, one module a stage.

check     the config against labels.csv before any work: classes, positive class, channels,
          each split's class counts (`prepare` and the studies call it first)
cohort    labels.csv + glob patterns -> Subjects (files found, labels checked)
bids      a BIDS folder (participants.tsv, sub-<id>/[ses-<s>/]anat/) -> the same Subjects
layouts   config.data.layout: which of the two reads a cohort (`find`), and its label table
geometry  NIfTI in and out, RAS reorientation, resampling, grids (also for preprocess, gradcam)
spec      SampleSpec: the settings that decide the examples (the records' cache key) and the
          example schema (keys, TFDS features)
samples   a Subject -> arrays: fused 2D lesion slices or a 3D volume
whitestripe  WhiteStripe normalization (intensity-normalization), the contrast rule by modality name
splits    stratified, patient-grouped test/validation split and cross-validation folds
split_file a study's split as a file (subject_id,group,split,fold): written by every run,
          read back to fix the split (config.data.split.file)
builder   the TFDS builder (registered as data_builders/ernjax_mri): Subjects -> array_record shards
loading   the builder's worker processes: light to start, and whether a pool pays
beam_build  the same build on an Apache Beam runner (the [beam] extra)
build     `python -m ernjax.data.build`: the records ahead of a run, in process or on Beam
records   build once per setting (atomic, cached by a hash), open, index
prepare   cohort + records + multi-host barrier + fold selection -> DataInfo
pipeline  Grain: shuffle, augment, batch, shard by process; the trainer's data seam (DataPipeline)
synthetic the embedded phantom cohort, written in the layout of a real one
"""
