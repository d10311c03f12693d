"""Metrics: daily snapshots of the figures, their thresholds (monitoring.yaml), and the trend
charts the UI shows."""
