"""Evaluation: statistics, predictions and how they are scored, tables and figures.

stats        metrics with CIs, DeLong, bootstrap, subject aggregation, threshold choice, t tests
predictions  per-example predictions (CSV in and out), cut-offs from validation, scoring, ROC data
reporting    flat results, text/Markdown/CSV tables, ROC figures, JSON
"""
