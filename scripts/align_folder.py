"""Write a landmark-aligned copy of a face data set, as a folder facetrip can train on.

Every image is aligned by :func:`facetrip.data.alignment.align_faces` (dlib's 5 landmarks,
similarity transform onto the mean ORL layout) into the frame facetrip aligns a model
input of ``--image-size`` into, and written as ``OUT/<identity>/<name>.png``.

Used for the "aligned faces, from scratch" measurement in docs/quality.md:

    .venv/bin/python scripts/align_folder.py orl_faces /tmp/orl_aligned
    .venv/bin/python scripts/compare_strategies.py --config configs/scratch.toml \\
        --variant "aligned=data.source:folder:/tmp/orl_aligned" --splits 0 1 2 3 4 --work-dir runs/align
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="orl_faces | folder:PATH | tfds:NAME")
    parser.add_argument("out", type=Path, help="output folder (OUT/<identity>/<image>.png)")
    parser.add_argument("--image-size", type=int, nargs=2, default=[32, 26], metavar=("H", "W"),
                        help="the model input the aligned images are meant for, which sets the frame's aspect "
                             "(default: the from-scratch recipe's 32 x 26)")
    parser.add_argument("--data-dir", default=None, help="tfds storage folder")
    args = parser.parse_args(argv)

    from facetrip.data import load_faces
    from facetrip.data.alignment import align_faces, alignment_frame

    faces = load_faces(args.source, data_dir=args.data_dir)
    frame = alignment_frame(tuple(args.image_size))
    aligned, faces_missed = align_faces(faces, frame)
    for encoded, label, file_name in zip(aligned.encoded, aligned.labels, aligned.file_names):
        path = args.out / faces.identity_names[label] / (Path(file_name).stem + ".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encoded)
    print(f"{len(aligned)} images of {len(faces.identity_names)} identities aligned into {frame[0]} x {frame[1]} "
          f"in {args.out}; {faces_missed} without a detected face (landmarks placed in the whole image)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
