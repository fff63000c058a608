"""Offline triplet mining over a whole split (the code: :mod:`facetrip.mining.problem`)."""

from facetrip.mining.problem import *  # noqa: F401,F403
