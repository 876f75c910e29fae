"""Write data/reviews.csv: ~300 short product reviews, written for this project, reproducibly.

Each review is assembled from a few sentence templates per tone (praise, mixed, complaint,
neutral) and per-product details, drawn from a seeded random generator, so the file is the same
on every run. The sample is meant to look like what users feed batchrun: commas and quotes inside
fields, a few multi-line reviews, some non-English ones, the odd emoji.

    python data/make_reviews.py            # rewrites data/reviews.csv next to this script
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

SEED = 20241121
ROWS = 300

# product -> (category, things people mention about it)
PRODUCTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Aurora 2 wireless earbuds": ("audio", ("battery life", "noise cancelling", "the case hinge",
                                            "the fit", "call quality", "bass")),
    "Kestrel 14 laptop sleeve": ("accessories", ("the zipper", "the padding", "the strap",
                                                 "the color", "the inner pocket")),
    "Birchwood pour-over kettle": ("kitchen", ("the spout", "the handle", "heat-up time",
                                               "the thermometer", "the lid")),
    "Nimbus memory-foam pillow": ("home", ("firmness", "the cover", "the smell out of the box",
                                           "neck support", "how warm it sleeps")),
    "TrailMate 30L daypack": ("outdoor", ("the hip belt", "the rain cover", "the side pockets",
                                          "the back panel", "the stitching")),
    "Lumen desk lamp": ("home", ("the dimmer", "color temperature", "the clamp", "the USB port",
                                 "the arm joints")),
    "Quillfast gel pens (12-pack)": ("office", ("ink flow", "drying time", "the grip",
                                                "the colors", "the clip")),
    "Orbit smart plug": ("smart home", ("the app", "setup", "the schedule feature",
                                        "Wi-Fi range", "energy monitoring")),
    "Pebble 10,000 mAh power bank": ("electronics", ("charging speed", "the size", "the cable",
                                                     "the LED indicator", "weight")),
    "Saffron Street cookbook": ("books", ("the recipes", "the photos", "the index",
                                          "the ingredient lists", "the binding")),
    "Halcyon yoga mat": ("fitness", ("grip", "thickness", "the smell", "the carrying strap",
                                     "durability")),
    "Vela cast-iron skillet": ("kitchen", ("the seasoning", "weight", "the handle",
                                           "heat retention", "the pour spouts")),
    "Drift 27\" monitor": ("electronics", ("the stand", "color accuracy", "the menu buttons",
                                          "brightness", "the refresh rate")),
    "Fernleaf plant pot set": ("garden", ("drainage", "the glaze", "the saucers", "sizes",
                                          "packaging")),
    "Tandem kids' balance bike": ("kids", ("assembly", "the seat height", "the tires",
                                           "weight", "the handlebar grips")),
    "Cinder mechanical keyboard": ("electronics", ("the switches", "the keycaps", "the backlight",
                                                   "the cable", "the software")),
    "Harbor rain jacket": ("clothing", ("the hood", "breathability", "the sizing", "the zips",
                                        "waterproofing")),
    "Moss & Stone soy candle": ("home", ("the scent", "burn time", "the wick", "the jar",
                                         "the label")),
}

OPENERS = {
    "praise": ("Really happy with this.", "Exceeded my expectations.", "Five stars, no notes.",
               "Bought it on a whim and I'm glad I did.", "Honestly one of my better purchases.",
               "Second one I've bought, that says it all."),
    "mixed": ("It's fine, mostly.", "Good, not great.", "Some things I love, some I don't.",
              "Mixed feelings on this one.", "Does the job, with caveats."),
    "complaint": ("Disappointed.", "Would not buy again.", "Returned it after a week.",
                  "Not worth the price.", "Wanted to like it, really did."),
    "neutral": ("Arrived on time.", "Bought this as a gift.", "Using it for about a month now.",
                "Replaced an older model with this.", "Got it during a sale."),
}
GOOD = ("{thing} is excellent", "{thing} works better than I expected", "I love {thing}",
        "{thing} feels solid and well made", "{thing} is exactly as described",
        "no complaints about {thing}")
BAD = ("{thing} got worse after {weeks} weeks", "{thing} is flimsy", "{thing} is a letdown",
       "{thing} stopped working properly", "{thing} feels cheap", "{thing} is worse than advertised")
MEH = ("{thing} is okay", "{thing} takes some getting used to", "{thing} could be better",
       "{thing} is about what you'd expect for the price")
CLOSERS = {
    "praise": ("Would recommend.", "My partner wants one now.", "Great value.",
               "Already ordered another for my sister.", ""),
    "mixed": ("Would buy again on sale.", "Three stars feels fair.", "Check the size before you buy.",
              ""),
    "complaint": ("Customer service was slow to reply.", "Save your money.",
                  "Refund took two weeks.", "Shame, because it looked great in the photos.", ""),
    "neutral": ("Too early to say more.", "Will update after a few months.", ""),
}
QUOTES = ('The box said "premium quality", which is a stretch.',
          'My kid calls it "the good one".',
          'The manual\'s "quick start" took me 40 minutes.',
          'Someone at the store called it "bulletproof"; we\'ll see.')
EMOJI = {"praise": (" 👍", " 😍", " ⭐⭐⭐⭐⭐"), "mixed": (" 🤷", " 🙃"),
         "complaint": (" 👎", " 😬"), "neutral": (" 🙂",)}
FOREIGN = (
    ("fr", "Très bon produit, conforme à la description. Livraison rapide.", 5),
    ("fr", "Déçu : ne tient pas ses promesses, et le service client ne répond pas.", 2),
    ("de", "Gutes Preis-Leistungs-Verhältnis, aber die Verarbeitung könnte besser sein.", 3),
    ("de", "Absolut zufrieden. Würde ich wieder kaufen!", 5),
    ("es", "Me encanta, funciona de maravilla.", 5),
    ("es", "No lo recomiendo, llegó dañado y tardaron en cambiarlo.", 1),
    ("pt", "Produto bom, mas a embalagem poderia ser melhor.", 3),
    ("it", "Ottimo acquisto, consigliato a tutti.", 5),
    ("ru", "Хорошая вещь за свои деньги, но инструкция так себе.", 3),
    ("ja", "とても使いやすいです。また買いたいと思います。", 5),
)
TONE_RATINGS = {"praise": (4, 5), "mixed": (3, 3), "complaint": (1, 2), "neutral": (3, 4)}


_PLURAL_VERBS = {"is": "are", "feels": "feel", "works": "work", "takes": "take"}


def _clause(template: str, thing: str, weeks: int) -> str:
    """Fill a template with a thing, making the verb after it agree ("the tires are")."""
    text = template.format(thing=thing, weeks=weeks)
    if thing.endswith("s") and not thing.endswith(("ness", "sleeps")):
        head, _, rest = text.partition(thing + " ")
        verb, space, tail = rest.partition(" ")
        if rest and verb in _PLURAL_VERBS:
            text = head + thing + " " + _PLURAL_VERBS[verb] + space + tail
    return text


def _sentence(text: str) -> str:
    text = text.strip()
    return text[0].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")


def review(rng: random.Random, things: tuple[str, ...]) -> tuple[str, int, str]:
    """One review: (text, rating, language)."""
    if rng.random() < 0.06:
        language, template, rating = rng.choice(FOREIGN)
        return template, rating, language
    tone = rng.choices(("praise", "mixed", "complaint", "neutral"), weights=(4, 3, 3, 2))[0]
    rating = rng.randint(*TONE_RATINGS[tone])
    first, second = rng.sample(things, 2)
    weeks = rng.randint(2, 9)
    parts = [rng.choice(OPENERS[tone])]
    if tone == "praise":
        parts.append(_sentence(_clause(rng.choice(GOOD), first, weeks)))
    elif tone == "complaint":
        parts.append(_sentence(_clause(rng.choice(BAD), first, weeks)))
    elif tone == "mixed":
        good = _clause(rng.choice(GOOD), first, weeks)
        bad = _clause(rng.choice(BAD + MEH), second, weeks)
        parts.append(_sentence(f"{good}, but {bad}"))
    else:
        parts.append(_sentence(_clause(rng.choice(MEH + GOOD), first, weeks)))
    if rng.random() < 0.08:
        parts.append(rng.choice(QUOTES))
    closer = rng.choice(CLOSERS[tone])
    if closer:
        parts.append(closer)
    if rng.random() < 0.12:  # some people write a single line
        parts = [parts[1]]
    parts = parts[:3]
    separator = "\n" if rng.random() < 0.05 else " "
    text = separator.join(parts)
    if rng.random() < 0.04:
        text += rng.choice(EMOJI[tone])
    return text, rating, "en"


def rows(n: int = ROWS, seed: int = SEED) -> list[dict[str, object]]:
    """The sample as dicts, in id order."""
    rng = random.Random(seed)
    names = sorted(PRODUCTS)
    out = []
    for i in range(1, n + 1):
        product = rng.choice(names)
        category, things = PRODUCTS[product]
        text, rating, language = review(rng, things)
        out.append({"id": f"r{i:04d}", "product": product, "category": category,
                    "rating": rating, "language": language, "review": text})
    return out


def main(argv: list[str]) -> None:
    target = Path(argv[1]) if len(argv) > 1 else Path(__file__).with_name("reviews.csv")
    data = rows()
    with target.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(data[0]))
        writer.writeheader()
        writer.writerows(data)
    print(f"wrote {len(data)} reviews to {target}")


if __name__ == "__main__":
    main(sys.argv)
