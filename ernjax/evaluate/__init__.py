"""Evaluation: statistics, predictions and how they are scored, tables and figures.

stats        metrics with CIs, DeLong, bootstrap, subject aggregation, threshold choice, t tests
predictions  per-example predictions of one split, CSV in and out
scoring      the scoring policy of config.eval: positive class, cut-offs from validation, the
             subject rule, scores and ROC data (the one owner: trainer, studies and predict ask it)
reporting    flat results, text/Markdown/CSV tables, ROC figures, JSON
calibration  Brier, calibration intercept and slope, reliability curves, decision curves (net
             benefit), recalibration fitted on validation; their tables and figures
readers      readers' decisions per subject against the model's at its validation cut-off:
             metrics with CIs, McNemar, Gao 2020's t tests, the readers as ROC points
run_report   WORKDIR/report.html
"""
