#!/usr/bin/env python3
"""Converts the CIFAR-10 binary batches (https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz,
extracted) into the JPEG-folder layout the mirror archive cifar10-jpg.tar.gz holds:

    OUT/{train,test}/<class>/NNNN.jpg     32x32 RGB, classes in label order = alphabetical order,
                                          NNNN = the image's index within its class, in file order

JPEGs are written with Pillow's defaults (quality 75, 4:2:0 chroma subsampling), the settings the
mirror's files were written with, so pixels are close to the mirror's, not necessarily identical.
Used by scripts/fetch-data.sh when no mirror is set.

Usage: cifar10_bin_to_jpg.py BATCHES_DIR OUT
"""
import os
import sys

from PIL import Image

RECORD = 1 + 3 * 32 * 32
SPLITS = {
    "train": [f"data_batch_{i}.bin" for i in range(1, 6)],
    "test": ["test_batch.bin"],
}


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    meta = os.path.join(src, "batches.meta.txt")
    with open(meta) as f:
        classes = [line.strip() for line in f if line.strip()]
    if len(classes) != 10:
        raise SystemExit(f"error: {meta} names {len(classes)} classes, expected 10")
    for split, files in SPLITS.items():
        counts = [0] * 10
        for c in classes:
            os.makedirs(os.path.join(out, split, c), exist_ok=True)
        for name in files:
            path = os.path.join(src, name)
            with open(path, "rb") as f:
                data = f.read()
            if len(data) % RECORD:
                raise SystemExit(f"error: {path} is {len(data)} bytes, not a whole number of records")
            for off in range(0, len(data), RECORD):
                label = data[off]
                if label >= 10:
                    raise SystemExit(f"error: {path}: label {label} at record {off // RECORD}")
                plane = data[off + 1 : off + RECORD]  # R plane, G plane, B plane (1024 bytes each)
                rgb = Image.merge(
                    "RGB",
                    [Image.frombytes("L", (32, 32), plane[i * 1024 : (i + 1) * 1024]) for i in range(3)],
                )
                rgb.save(os.path.join(out, split, classes[label], f"{counts[label]:04d}.jpg"))
                counts[label] += 1
        print(f"{split}: {sum(counts)} images, per class {counts}", file=sys.stderr)


if __name__ == "__main__":
    main()
