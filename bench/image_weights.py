"""Check the packaged image encoder: EfficientNet-Lite0 as tunelab converts it, classifying real ImageNet photos.

A broken conversion (a wrong key, activation, padding or normalisation) shows as near-chance accuracy; Google
publishes 75.1% top-1 for Lite0 on ImageNet validation. The photos are the 1,000 of the public repository
EliSchwartz/imagenet-sample-images (one per ImageNet class, named ``<wnid>_<name>.JPEG``); whether each comes from
ImageNet's training or validation split is not stated, so the figure checks the conversion, not the model.

    python bench/image_weights.py --images DIR_OF_JPEGS

Writes bench/results/image_weights.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=Path, required=True, help="folder of <wnid>_<name>.JPEG photos")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "image_weights.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from tunelab.images import read_image
    from tunelab.models import resolve_model

    folder = resolve_model("efficientnet-lite0").path
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    wnids = [line.split()[0] for line in (ROOT / "src" / "tunelab" / "_resources" / "imagenet_classes.txt")
             .read_text().splitlines()]
    files = sorted(args.images.glob("*.JPEG"))
    if not files:
        sys.exit(f"no .JPEG files in {args.images}")
    top1 = top5 = 0
    start = time.perf_counter()
    for i in range(0, len(files), args.batch_size):
        chunk = files[i:i + args.batch_size]
        images = [read_image(str(f), args.images, f.name) for f in chunk]
        with torch.no_grad():
            logits = model(**processor(images, return_tensors="pt")).logits
        for f, row in zip(chunk, logits):
            gold = wnids.index(f.name.split("_")[0])
            best = row.topk(5).indices.tolist()
            top1 += best[0] == gold
            top5 += gold in best
        print(f"{i + len(chunk)}/{len(files)}: top-1 {top1 / (i + len(chunk)):.4f}", file=sys.stderr)
    seconds = time.perf_counter() - start
    source = json.loads((folder / "SOURCE.json").read_text())
    result = {"model": "efficientnet-lite0", "source": source, "images": len(files),
              "top1": round(top1 / len(files), 4), "top5": round(top5 / len(files), 4),
              "published_imagenet_val_top1": 0.751, "images_per_s": round(len(files) / seconds, 2),
              "cores": os.cpu_count(),
              "command": "python bench/image_weights.py --images IMAGENET_SAMPLE_IMAGES_DIR "
                         "(EliSchwartz/imagenet-sample-images, commit bc69043)"}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
