"""ccci-dist: long-lived Builder/Reviewer agent loops across hosts on Celery + Redis.

The Celery app is ``ccci_dist.engine.app:app`` so that ``celery -A ccci_dist worker`` finds it.
"""

__version__ = "0.1.0"
