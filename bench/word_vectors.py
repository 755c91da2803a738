"""How far a synonym swap moves a sentence in MiniLM's word-embedding space, next to the adversarial epsilon.

Adversarial training perturbs each example's word embeddings inside an L2 ball of radius epsilon (0.1 in
bench/robust.py); the word attack swaps whole words for WordNet synonyms. This measures the packaged MiniLM's
word vectors: their L2 norms, and the L2 distance between a word and its WordNet synonyms (words that are one
token each in the vocabulary, taken from the SST-2 dev sentences) — the smallest move one swap makes.

    python bench/word_vectors.py [--data-dir ../shared/data]

Writes bench/results/word_vectors.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "word_vectors.json")
    args = parser.parse_args()
    from transformers import AutoModel, AutoTokenizer

    from tunelab.data import read_records
    from tunelab.models import resolve_model
    from tunelab.synonyms import WordNet
    from tunelab.textedits import STOPWORDS

    path = resolve_model("minilm").path
    tokenizer = AutoTokenizer.from_pretrained(path)
    vectors = AutoModel.from_pretrained(path).get_input_embeddings().weight.detach()
    vocab = tokenizer.get_vocab()
    norms = vectors.norm(dim=1)
    wordnet = WordNet.load()
    words = sorted({w.lower() for r in read_records(args.data_dir / "sst2" / "dev.tsv", format="tsv").rows
                    for w in str(r["sentence"]).split() if w.isalpha() and w.lower() not in STOPWORDS})
    distances = []
    for word in words:
        if word not in vocab:
            continue
        for synonym in wordnet.synonyms(word):
            if synonym in vocab and synonym != word:
                distances.append(float((vectors[vocab[word]] - vectors[vocab[synonym]]).norm()))
    report = {"vocabulary": len(vocab), "norm_mean": round(float(norms.mean()), 4),
              "norm_median": round(float(norms.median()), 4),
              "synonym_pairs": len(distances), "synonym_distance_mean": round(statistics.mean(distances), 4),
              "synonym_distance_min": round(min(distances), 4),
              "synonym_distance_p10": round(sorted(distances)[len(distances) // 10], 4),
              "command": "python bench/word_vectors.py " + " ".join(sys.argv[1:])}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(report)


if __name__ == "__main__":
    main()
