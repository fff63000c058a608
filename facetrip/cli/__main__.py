"""``python -m facetrip.cli``: the `facetrip` command line."""

from facetrip.cli import app

if __name__ == "__main__":
    app()
