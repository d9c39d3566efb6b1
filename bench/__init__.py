"""Benchmarks of digitflow against an in-process loop, a monolith and a chain per job.

``python -m bench`` (``make bench``) runs them; see ``bench/__main__.py``. Never part of the tests.
"""
