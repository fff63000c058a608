"""facetrip: triplet-loss face embeddings."""
__version__ = "0.1.0"
