"""Evaluation: metrics with bootstrap intervals, the baselines (training-free scores and scikit-learn logistic
regressions), and the text tables."""
