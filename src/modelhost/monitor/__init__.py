"""Observability: Prometheus metrics (declared once, in ``metrics.py``)."""
