"""English-like text from a small template grammar, for the zoo's causal LM (deterministic per seed, pure Python)."""
from __future__ import annotations

import random

# each noun carries the verbs and objects that make sense for it, so the text has structure to learn
NOUNS = {
    "farmer": ("carried", "sold", "planted", "watered", "counted"),
    "baker": ("baked", "sold", "carried", "tasted", "wrapped"),
    "teacher": ("read", "wrote", "explained", "carried", "opened"),
    "child": ("found", "lost", "painted", "carried", "opened"),
    "sailor": ("tied", "pulled", "carried", "mended", "watched"),
    "doctor": ("opened", "checked", "wrote", "carried", "read"),
    "painter": ("painted", "mixed", "carried", "sold", "watched"),
    "miller": ("ground", "carried", "sold", "weighed", "counted"),
    "girl": ("found", "painted", "read", "opened", "watched"),
    "old man": ("read", "watched", "carried", "mended", "counted"),
}
OBJECTS = {
    "carried": ("basket", "box", "bag", "ladder", "lamp"), "sold": ("bread", "apples", "fish", "flour", "cloth"),
    "planted": ("seeds", "trees", "beans", "roses"), "watered": ("garden", "trees", "roses", "field"),
    "counted": ("coins", "apples", "sheep", "boxes"), "baked": ("bread", "cakes", "pies", "rolls"),
    "tasted": ("soup", "bread", "cakes", "honey"), "wrapped": ("cakes", "bread", "gifts", "rolls"),
    "read": ("letter", "book", "map", "note"), "wrote": ("letter", "note", "story", "list"),
    "explained": ("lesson", "map", "story", "rule"), "found": ("key", "coin", "shell", "feather"),
    "lost": ("key", "coin", "hat", "ribbon"), "painted": ("fence", "door", "picture", "boat"),
    "opened": ("door", "window", "box", "letter"), "tied": ("rope", "knot", "boat", "sail"),
    "pulled": ("rope", "net", "boat", "cart"), "mended": ("net", "sail", "coat", "fence"),
    "watched": ("sea", "birds", "sky", "river"), "checked": ("patient", "list", "note", "clock"),
    "mixed": ("colors", "paint", "flour", "dough"), "ground": ("wheat", "corn", "grain", "flour"),
    "weighed": ("grain", "flour", "bags", "corn"),
}
ADJECTIVES = ("old", "small", "heavy", "bright", "quiet", "wooden", "red", "green", "warm", "wet")
PLACES = ("the market", "the river", "the village", "the harbor", "the mill", "the school", "the garden",
          "the hill", "the bridge", "the square")
TIMES = ("in the morning", "at noon", "in the evening", "after the rain", "before dawn", "on sunday")
WEATHER = ("the sun was warm", "the wind was cold", "the rain fell softly", "the sky was grey",
           "the air was still")
FEELINGS = ("happy", "tired", "hungry", "proud", "worried", "calm")


def _np(rng: random.Random, noun: str) -> str:
    return f"the {rng.choice(ADJECTIVES)} {noun}" if rng.random() < 0.4 else f"the {noun}"


def sentence(rng: random.Random) -> str:
    """One sentence; the templates share words, so a model must read the context to predict well."""
    who = rng.choice(list(NOUNS))
    verb = rng.choice(NOUNS[who])
    obj = _np(rng, rng.choice(OBJECTS[verb]))
    kind = rng.random()
    if kind < 0.35:
        return f"{_np(rng, who)} {verb} {obj} to {rng.choice(PLACES)} {rng.choice(TIMES)} ."
    if kind < 0.55:
        return f"{rng.choice(TIMES)} , {_np(rng, who)} {verb} {obj} near {rng.choice(PLACES)} ."
    if kind < 0.7:
        return f"{rng.choice(WEATHER)} , so the {who} was {rng.choice(FEELINGS)} and {verb} {obj} ."
    if kind < 0.85:
        other = rng.choice(list(NOUNS))
        verb2 = rng.choice(NOUNS[other])
        return (f"the {who} {verb} {obj} , and the {other} {verb2} {_np(rng, rng.choice(OBJECTS[verb2]))} "
                f"at {rng.choice(PLACES)} .")
    return f"when the {who} {verb} {obj} , everyone at {rng.choice(PLACES)} was {rng.choice(FEELINGS)} ."


SPLIT_SEEDS = {"train": 0, "valid": 1, "test": 2}


def text(split: str, chars: int, seed: int | None = None) -> str:
    """About `chars` characters of paragraphs (3-6 sentences each, blank-line separated) for `split`."""
    rng = random.Random(SPLIT_SEEDS[split] if seed is None else seed)
    out, size = [], 0
    while size < chars:
        para = " ".join(sentence(rng) for _ in range(rng.randint(3, 6)))
        out.append(para)
        size += len(para) + 2
    return "\n\n".join(out) + "\n"
