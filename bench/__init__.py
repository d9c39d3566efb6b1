"""Benchmarks of digitflow against an in-process loop, a monolith, a chain per job and a peer (BentoML).

``python -m bench`` (``make bench``) runs them; see ``bench/__main__.py``. Never part of the tests.
"""
