"""``make bench``: the load benchmark of wsgiproxy against a fast fake upstream and nginx.

Run it as ``python -m tests.bench [--quick | --soak | --profile]`` from the repository root; see
``run.py``. Nothing here is a pytest module (no ``test_*.py`` names), so ``make test`` skips it.
"""
