"""Writes the small sentiment sample that ships with tunelab (src/tunelab/_resources/demo_sentiment.jsonl).

Hand-written fragments combined with a fixed seed: subjects from three domains (films, restaurants,
products), positive and negative predicates, and some contrastive sentences whose label follows the
clause after "but", so the task is not a bag-of-words lookup. Run: python scripts/make_demo_data.py
"""

import json
import random
from pathlib import Path

SUBJECTS = [
    "the film", "this movie", "the acting", "the plot", "the soundtrack", "the ending", "the script",
    "the dialogue", "the cinematography", "the lead actress", "the sequel", "the documentary",
    "the restaurant", "the pasta", "the service", "the dessert", "our waiter", "the coffee", "the menu",
    "the kitchen staff", "the pizza", "this phone", "the battery", "the screen", "the headphones",
    "the keyboard", "this laptop", "the charger", "the app", "the camera", "the delivery", "the price",
]
POSITIVE = [
    "was wonderful", "exceeded every expectation", "is a real delight", "felt warm and genuine",
    "was sharp, clever and funny", "made the whole evening", "is worth every penny", "works flawlessly",
    "left me smiling for days", "was beautifully done", "is the best I have had in years",
    "was fresh and full of flavour", "surprised me in the best way", "is quick and reliable",
    "deserves all the praise", "was moving and honest", "is elegant and well made", "simply works",
    "kept me hooked from start to finish", "was friendly and attentive",
]
NEGATIVE = [
    "was a complete waste of time", "fell apart after a week", "was bland and forgettable",
    "is painfully slow", "made no sense at all", "was cold and overpriced", "broke on the first day",
    "dragged on forever", "is a huge disappointment", "was rude and careless", "felt cheap and flimsy",
    "was dull from beginning to end", "is not worth the money", "kept crashing", "tasted stale",
    "was loud, messy and confusing", "let me down badly", "is the worst I have tried", "stopped working",
    "was clumsy and predictable",
]
OPENERS = ["", "Honestly, ", "I have to say ", "Overall, ", "To be fair, ", "Frankly, "]
MILD_POS = ["the start was slow", "the price is high", "the parking was awful", "the trailer looked weak"]
MILD_NEG = ["the poster looked great", "the reviews were glowing", "the box was pretty", "the first minute was promising"]


def sentence(rng: random.Random, label: str) -> str:
    subject = rng.choice(SUBJECTS)
    predicate = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
    if rng.random() < 0.25:
        concession = rng.choice(MILD_POS if label == "positive" else MILD_NEG)
        return f"{concession[0].upper()}{concession[1:]}, but {subject} {predicate}."
    opener = rng.choice(OPENERS)
    text = f"{opener}{subject} {predicate}."
    return text[0].upper() + text[1:]


def main() -> None:
    rng = random.Random(7)
    seen: set[str] = set()
    rows = []
    while len(rows) < 400:
        label = "positive" if len(rows) % 2 == 0 else "negative"
        text = sentence(rng, label)
        if text in seen:
            continue
        seen.add(text)
        rows.append({"text": text, "label": label})
    out = Path(__file__).resolve().parents[1] / "src" / "tunelab" / "data" / "demo_sentiment.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
