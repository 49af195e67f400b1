"""Where ``celery -A ccci_dist`` finds the app; it lives in :mod:`ccci_dist.engine.app`."""

from ccci_dist.engine.app import app

__all__ = ["app"]
