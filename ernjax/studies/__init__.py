"""Studies: several training runs on the same patients, scored together.

crossval  k-fold cross-validation by patient: per-fold, pooled out-of-fold and fold-ensemble metrics
compare   several models x MRI sequence sets on one split: one table, DeLong and t tests, ROC curves
repeat    one run over several training seeds: mean, SD and range of its metrics, each seed's CIs
external  a finished run, or a cross-validation's fold ensemble, scored on another cohort at its
          own cut-offs, with a breakdown per labels.csv column (site, scanner)
runs      what every study's run shares: one cohort and records, networks or the radiomics
          baseline (model "radiomics"), finished runs not redone
"""
