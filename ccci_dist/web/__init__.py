"""The operator's web dashboard (``ccci-dist web``); the only package besides cli/ with a web stack."""
