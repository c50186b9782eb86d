"""What the service tells its operator: the Prometheus metrics (declared and bumped in
metrics.py), the per-request access line (access_log.py) and the JSON logging (logs.py)."""
