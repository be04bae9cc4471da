"""Ray Tune, MLflow, pandas and the CLI around the ieskips library (a thin adapter; ieskips never imports it)."""
