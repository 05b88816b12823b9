"""The demo's data set: short reviews whose sentiment needs the whole sentence, written by this project.

Every sentence is built from the word lists below (our own) in one of three kinds of frame:
    plain       "i thought the soup was delightful."                   -> the adjective's polarity
    negated     "nobody thought the soup was delightful."              -> the opposite polarity
    contrast    "the soup looked dreadful, but it was delightful."     -> the polarity after "but"
Both polarities of adjective appear in every kind of frame, so no single word decides the label: a
bag-of-words reading is at chance on the negated and contrast frames, and the model must learn how
"not", "nobody", "far from" and "but" act on the adjective. A fresh head starts near 50%.
"""
import random

from .glue import Example

SUBJECTS = ["the pasta", "the soup", "this phone", "the hotel room", "the concert", "the new album", "our waiter",
            "the movie", "the laptop", "the museum tour", "the service", "the coffee", "the novel", "the train ride",
            "the customer support", "the camera", "the garden", "the lecture", "the playground", "the sofa",
            "the video game", "the bakery", "the flight", "the bike", "the theatre show", "the dentist"]
POSITIVE = ["great", "excellent", "wonderful", "delightful", "superb", "impressive", "pleasant", "enjoyable",
            "charming", "outstanding", "lovely", "brilliant", "fantastic", "marvellous"]
NEGATIVE = ["awful", "terrible", "disappointing", "dreadful", "boring", "mediocre", "unpleasant", "annoying",
            "poor", "dull", "horrible", "bland", "dismal", "tedious"]
PLAIN = ["{s} was {a}.", "honestly, {s} was really {a}.", "i thought {s} was {a}.",
         "everyone agreed that {s} was {a}.", "{s} turned out to be {a}.", "my friends found {s} {a}."]
NEGATED = ["{s} was not {a}.", "{s} was not {a} at all.", "i would never call {s} {a}.",
           "nobody thought {s} was {a}.", "{s} was far from {a}.", "i did not think {s} was {a}."]
CONTRAST = ["{s} looked {b}, but it was {a}.", "at first {s} seemed {b}, but in the end it was {a}.",
            "people said {s} would be {b}, but it was {a}."]


def _sentence(rng: random.Random) -> tuple[str, int]:
    label = rng.randrange(2)  # 1 positive, 0 negative: balanced by construction
    kind = rng.choice(("plain", "negated", "contrast"))
    s = rng.choice(SUBJECTS)
    if kind == "plain":
        a = rng.choice(POSITIVE if label else NEGATIVE)
        return rng.choice(PLAIN).format(s=s, a=a), label
    if kind == "negated":
        a = rng.choice(NEGATIVE if label else POSITIVE)
        return rng.choice(NEGATED).format(s=s, a=a), label
    a, b = rng.choice(POSITIVE if label else NEGATIVE), rng.choice(NEGATIVE if label else POSITIVE)
    return rng.choice(CONTRAST).format(s=s, a=a, b=b), label


def demo_splits(n_train: int = 2000, n_val: int = 500, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Distinct sentences, shuffled by `seed`, the first n_train for training and the next n_val to validate."""
    rng = random.Random(seed)
    seen: dict[str, int] = {}
    while len(seen) < n_train + n_val:
        text, label = _sentence(rng)
        seen.setdefault(text, label)
    examples = [Example(text, None, label) for text, label in seen.items()]
    return examples[:n_train], examples[n_train:]
