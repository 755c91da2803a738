"""Where ``tunelab serve``'s time goes under 32 concurrent clients: py-spy samples the server process while
bench/serve_load.py's load generator runs (same machine, same SST-2 MiniLM artifact), and the samples are
summed by thread and by the innermost tunelab / web / torch frame.

Run:  .venv/bin/pip install py-spy && .venv/bin/python bench/serve_profile.py [--artifact DIR]
Writes bench/results/serve_profile.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import serve_load  # noqa: E402

LIBRARIES = ("tunelab", "fastapi", "starlette", "pydantic", "uvicorn", "torch", "transformers", "tokenizers", "json")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--artifact", type=Path, default=Path("/tmp/tunelab-bench-inference/sst2/artifact"))
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve_profile.txt")
    args = parser.parse_args()
    from tunelab.data import read_records

    texts = [r["sentence"] for r in read_records(args.data_dir / "sst2" / "dev.tsv", format="tsv").rows]
    port = serve_load.free_port()
    server = serve_load.start([str(Path(sys.executable).with_name("tunelab")), "serve", f"m={args.artifact}",
                               "--port", str(port)], port)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "samples.txt"
        spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(server.pid), "-d", "12",
                                "-f", "raw", "-o", str(raw), "--threads"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            load = asyncio.run(serve_load.load(f"http://127.0.0.1:{port}/v1/models/m/predict", texts, 32, 800,
                                               lambda text: {"inputs": [text]}))
            spy.wait(timeout=120)
        finally:
            server.terminate()
            server.wait(timeout=60)
        threads, frames, total = Counter(), Counter(), 0
        for line in raw.read_text().splitlines():
            stack, count = line.rsplit(" ", 1)
            parts, n = stack.split(";"), int(count)
            total += n
            thread = "model worker" if "tunelab-model" in parts[0] else "event loop" if "MainThread" in parts[0] else "other"
            threads[thread] += n
            frames[next((f for f in reversed(parts) if any(k in f for k in LIBRARIES)), parts[-1])[:110]] += n
    lines = ["command: python bench/serve_profile.py " + " ".join(sys.argv[1:]), f"load during sampling: {load}",
             f"samples: {total}", "", "by thread:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in threads.most_common()]
    lines += ["", "by innermost library frame (top 15):"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in frames.most_common(15)]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
