"""The method study: python -m study.run (see study/run.py)."""
