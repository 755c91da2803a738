"""How long the load-time integrity check takes: sha256 of the packaged MiniLM weights (the size of a full
MiniLM artifact's model file), best of 5, compared with reading the same bytes without hashing.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/artifact_hash.py   # -> bench/results/artifact_hash.json
"""

import json
import time
from pathlib import Path

from tunelab.artifact import file_sha256
from tunelab.models import resolve_model


def best(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def read_only(path: Path) -> None:
    with open(path, "rb") as handle:
        while handle.read(1 << 20):
            pass


path = resolve_model("minilm").path / "model.safetensors"
size_mb = path.stat().st_size / 1e6
hash_s = best(lambda: file_sha256(path))
read_s = best(lambda: read_only(path))
result = {"file": "minilm model.safetensors", "size_mb": round(size_mb, 1), "sha256_seconds": round(hash_s, 3),
          "sha256_mb_per_s": round(size_mb / hash_s), "read_only_seconds": round(read_s, 3),
          "hash_over_read": round(hash_s / read_s, 2)}
out = Path(__file__).parent / "results" / "artifact_hash.json"
out.write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result, indent=2))
