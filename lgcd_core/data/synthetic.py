"""Synthetic two-domain demo data in the real Amazon 2018 format, with known latent tastes.

Domain A is "Grocery" and domain B is "Kitchen". Every user and item has one latent taste
(italian, baking, tea, ...), carried *in words* by item titles and categories: a tea item in
Grocery is a matcha powder or a herbal tea, in Kitchen a teapot or an infuser. A user draws each
interaction from their main taste with probability ``taste_purity`` and from one secondary taste
otherwise, and picks items within a taste with Zipf-like popularity. Overlap users draw their A and
B items from the same tastes, interleaved in time, so a model reading only the A history can
predict the B items (and back). Timestamps increase per user.

Files written under ``out_dir``: ``reviews_{A,B}.json.gz`` and ``meta_{A,B}.json.gz`` (2018
layout), ``truth.json`` (latent tastes) and ``spec.json`` (the spec that produced them; a different
spec or generator version regenerates). Output is byte-for-byte deterministic given the spec.
"""

from __future__ import annotations

import gzip
import json
import string
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from lgcd_core.config import AmazonFiles, SyntheticSpec
from lgcd_core.io import atomic_path, write_json

GENERATOR_VERSION = 1
FILES: dict[str, AmazonFiles] = {
    d: AmazonFiles(reviews=f"reviews_{d}.json.gz", meta=f"meta_{d}.json.gz") for d in ("A", "B")
}
DOMAIN_NAMES = {"A": "Grocery", "B": "Kitchen"}
ROOT_CATEGORIES = {"A": ["Grocery & Gourmet Food"], "B": ["Home & Kitchen", "Kitchen & Dining"]}
START = int(datetime(2015, 1, 1, tzinfo=UTC).timestamp())
SPAN_DAYS = 3 * 365
MEAN_GAP_DAYS = 12


@dataclass(frozen=True)
class Taste:
    word: str
    category: dict[str, str]  # domain -> category name
    nouns: dict[str, tuple[str, ...]]  # domain -> product nouns
    brands: dict[str, tuple[str, ...]]  # domain -> brands


TASTES: tuple[Taste, ...] = (
    Taste(
        "italian",
        {"A": "Pasta & Italian Foods", "B": "Pasta & Pizza Tools"},
        {
            "A": ("Spaghetti Pasta", "Penne Rigate", "Basil Pesto Sauce", "Marinara Sauce", "Extra Virgin Olive Oil",
                  "Balsamic Vinegar of Modena", "Arborio Risotto Rice", "Sun-Dried Tomatoes", "Potato Gnocchi", "Lasagna Sheets"),
            "B": ("Pasta Maker Machine", "Pizza Stone", "Ravioli Cutter", "Garlic Press", "Pasta Pot with Strainer",
                  "Olive Oil Dispenser", "Parmesan Cheese Grater", "Pizza Cutter Wheel", "Spaghetti Server", "Pizza Peel"),
        },
        {"A": ("Tuscany Fields", "Nonna Rosa"), "B": ("Cucina Pro", "Mangia Tools")},
    ),
    Taste(
        "baking",
        {"A": "Baking Supplies", "B": "Bakeware"},
        {
            "A": ("All-Purpose Flour", "Pure Vanilla Extract", "Baking Powder", "Chocolate Cake Mix", "Semi-Sweet Chocolate Chips",
                  "Light Brown Sugar", "Active Dry Yeast", "Rainbow Sprinkles", "Dutch Cocoa Powder", "Almond Flour"),
            "B": ("Stand Mixer", "Muffin Pan", "Round Cake Pan", "Rolling Pin", "Cooling Rack",
                  "Piping Bags and Tips", "Measuring Cups", "Silicone Baking Mat", "Bundt Pan", "Cookie Cutters"),
        },
        {"A": ("Baker's Pantry", "Golden Mill"), "B": ("BakeRight", "Oven Artisan")},
    ),
    Taste(
        "tea",
        {"A": "Tea", "B": "Tea Accessories"},
        {
            "A": ("Green Tea Bags", "Ceremonial Matcha Powder", "Herbal Tea Sampler", "Chamomile Tea", "Earl Grey Tea",
                  "Oolong Tea Leaves", "Masala Chai Tea", "Loose Leaf Black Tea", "Jasmine Green Tea", "Rooibos Tea"),
            "B": ("Ceramic Teapot", "Whistling Tea Kettle", "Tea Infuser", "Porcelain Tea Cups", "Bamboo Matcha Whisk",
                  "Electric Tea Kettle", "Mesh Tea Strainer", "Tea Canister", "Gooseneck Kettle", "Glass Teapot with Infuser"),
        },
        {"A": ("Leaf & Kettle", "Jade Garden"), "B": ("TeaCraft", "Steep House")},
    ),
    Taste(
        "bbq",
        {"A": "Sauces & Rubs", "B": "Grilling Tools"},
        {
            "A": ("Smoky BBQ Sauce", "Brisket Dry Rub", "Hickory Smoked Salt", "Beef Jerky", "Chipotle Hot Sauce",
                  "Smoked Paprika", "Steak Seasoning", "Pork Rib Rub", "Mesquite Marinade", "Grill Seasoning Blend"),
            "B": ("Grill Tongs", "Meat Thermometer", "Basting Brush", "Smoker Box", "Cast Iron Grill Pan",
                  "Grill Cleaning Brush", "Rib Rack", "Burger Press", "Meat Shredder Claws", "Grill Basket"),
        },
        {"A": ("Pitmaster Joe", "Smokehouse Ranch"), "B": ("GrillForge", "Ember King")},
    ),
    Taste(
        "vegan",
        {"A": "Plant-Based Foods", "B": "Vegetable Prep"},
        {
            "A": ("Organic Quinoa", "Chia Seeds", "Unsweetened Almond Milk", "Red Lentil Pasta", "Nutritional Yeast",
                  "Pea Protein Powder", "Oat Milk", "Hemp Hearts", "Cashew Vegan Cheese", "Kale Chips"),
            "B": ("Vegetable Spiralizer", "High-Speed Blender", "Salad Spinner", "Food Processor", "Nut Milk Bag",
                  "Vegetable Chopper", "Sprouting Jar", "Cold Press Juicer", "Tofu Press", "Herb Keeper"),
        },
        {"A": ("Green Sprout", "Plant Table"), "B": ("VeggieWorks", "FreshPrep")},
    ),
    Taste(
        "coffee",
        {"A": "Coffee", "B": "Coffee Makers & Accessories"},
        {
            "A": ("Ground Coffee Medium Roast", "Whole Bean Coffee", "Espresso Beans", "Cold Brew Coffee", "Coffee Pods",
                  "Decaf Coffee", "French Roast Coffee", "Instant Coffee", "Hazelnut Coffee Creamer", "Colombian Coffee"),
            "B": ("French Press", "Burr Coffee Grinder", "Espresso Machine", "Pour Over Coffee Dripper", "Coffee Mug",
                  "Milk Frother", "Coffee Scale", "Cold Brew Coffee Maker", "Moka Pot", "Coffee Filters"),
        },
        {"A": ("Mountain Roasters", "Daily Grind"), "B": ("BrewMaster", "Barista Home")},
    ),
    Taste(
        "mexican",
        {"A": "Mexican Foods", "B": "Mexican Cookware"},
        {
            "A": ("Salsa Verde", "Tortilla Chips", "Taco Seasoning", "Refried Beans", "Chipotle Peppers in Adobo",
                  "Corn Tortillas", "Enchilada Sauce", "Pickled Jalapenos", "Mole Sauce", "Masa Harina"),
            "B": ("Tortilla Press", "Molcajete", "Taco Holders", "Tortilla Warmer", "Salsa Bowl",
                  "Citrus Juicer", "Comal Griddle", "Churro Maker", "Guacamole Bowl", "Quesadilla Maker"),
        },
        {"A": ("Casa Sol", "El Mercado"), "B": ("Cocina Azteca", "Fiesta Ware")},
    ),
    Taste(
        "asian",
        {"A": "Asian Foods", "B": "Asian Cookware"},
        {
            "A": ("Soy Sauce", "Jasmine Rice", "Ramen Noodles", "Sriracha Sauce", "Toasted Sesame Oil",
                  "White Miso Paste", "Roasted Nori Sheets", "Fish Sauce", "Red Curry Paste", "Udon Noodles"),
            "B": ("Carbon Steel Wok", "Rice Cooker", "Bamboo Steamer", "Chopsticks Set", "Sushi Making Kit",
                  "Dumpling Press", "Chinese Cleaver", "Rice Bowls", "Ramen Bowl", "Spider Strainer"),
        },
        {"A": ("Golden Lotus", "Kyoto Market"), "B": ("WokStar", "Zen Kitchen")},
    ),
)  # fmt: skip

GENERIC_BRANDS = {"A": ("Amazon Fresh", "Happy Belly", "Pantry Basics"), "B": ("HomeCraft", "KitchenAid Basics", "Utopia")}
MODIFIERS = {
    "A": ("Organic", "Premium", "Classic", "Family Size", "Gourmet", "Natural", "Artisan", "Value Pack"),
    "B": ("Stainless Steel", "Ceramic", "Nonstick", "Bamboo", "Glass", "Heavy Duty", "Compact", "Deluxe"),
}
SIZES = {
    "A": ("8 oz", "12 oz", "16 oz", "1 lb", "2 lb", "Pack of 3", "Pack of 6", "32 oz"),
    "B": ("Small", "Medium", "Large", "2 Piece Set", "1.5 Quart", "3 Quart", "12 Inch", "Set of 4"),
}


def taste_words(n_tastes: int) -> list[str]:
    return [taste.word for taste in TASTES[:n_tastes]]


# ---- generation --------------------------------------------------------------------------------


def _asins(rng: np.random.Generator, n: int, prefix: str, length: int) -> list[str]:
    """``n`` distinct Amazon-looking ids (ASINs are 10 characters, reviewer ids 14)."""
    alphabet = np.array(list(string.ascii_uppercase + string.digits))
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < n:
        candidate = prefix + "".join(rng.choice(alphabet, size=length - len(prefix)))
        if candidate not in seen:
            seen.add(candidate)
            ids.append(candidate)
    return ids


def _items(rng: np.random.Generator, spec: SyntheticSpec, domain: str, n: int, ids: list[str]) -> list[dict]:
    """Metadata records; item i has taste i % n_tastes, shuffled ids."""
    records = []
    for i, asin in enumerate(ids[:n]):
        taste = TASTES[i % spec.n_tastes]
        noun = taste.nouns[domain][rng.integers(len(taste.nouns[domain]))]
        brands = taste.brands[domain] + GENERIC_BRANDS[domain][:1]
        brand = brands[rng.integers(len(brands))]
        modifier = MODIFIERS[domain][rng.integers(len(MODIFIERS[domain]))]
        size = SIZES[domain][rng.integers(len(SIZES[domain]))]
        records.append(
            {
                "asin": asin,
                "title": f"{brand} {modifier} {noun}, {size}",
                "brand": brand,
                "category": ROOT_CATEGORIES[domain] + [taste.category[domain]],
                "price": f"${rng.integers(3, 80)}.{rng.integers(0, 100):02d}",
                "_taste": i % spec.n_tastes,
            }
        )
    return records


def _popularity(
    rng: np.random.Generator, items: list[dict], n_tastes: int, exponent: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per taste: (item positions, Zipf probabilities over a random popularity order)."""
    pools = []
    for taste in range(n_tastes):
        members = np.array([i for i, item in enumerate(items) if item["_taste"] == taste])
        members = rng.permutation(members)
        weights = 1.0 / np.arange(1, len(members) + 1) ** exponent
        pools.append((members, weights / weights.sum()))
    return pools


def _draw(rng: np.random.Generator, pools, tastes: tuple[int, int], purity: float, n: int) -> list[int]:
    """``n`` distinct item positions, each from the main taste w.p. ``purity`` else the second."""
    chosen: list[int] = []
    while len(chosen) < n:
        members, probs = pools[tastes[0] if rng.random() < purity else tastes[1]]
        p = probs * ~np.isin(members, chosen)
        if not p.any():  # taste exhausted (tiny specs): any unused item
            members = np.setdiff1d(np.concatenate([m for m, _ in pools]), chosen)
            p = np.ones(len(members))
        chosen.append(int(rng.choice(members, p=p / p.sum())))
    return chosen


def _users(rng: np.random.Generator, spec: SyntheticSpec, items: dict[str, list[dict]]) -> tuple[list[dict], dict]:
    """Review records of every user (time ordered) and each user's main taste."""
    pools = {d: _popularity(rng, items[d], spec.n_tastes, spec.zipf_exponent) for d in ("A", "B")}
    kinds = ["overlap"] * spec.n_overlap_users + ["A-only"] * spec.n_a_only_users + ["B-only"] * spec.n_b_only_users
    user_ids = _asins(rng, len(kinds), "A", 14)
    reviews: list[dict] = []
    user_taste: dict[str, int] = {}
    for user, kind in zip(user_ids, kinds):
        main = int(rng.integers(spec.n_tastes))
        second = int((main + rng.integers(1, spec.n_tastes)) % spec.n_tastes)
        user_taste[user] = main
        domains = ("A", "B") if kind == "overlap" else (kind[0],)
        events = []
        for d in domains:
            n = int(rng.integers(spec.min_len, spec.max_len + 1))
            events += [(d, i) for i in _draw(rng, pools[d], (main, second), spec.taste_purity, n)]
        order = rng.permutation(len(events))
        t = START + int(rng.integers(0, SPAN_DAYS * 86400))
        for k in order:
            t += 3600 + int(rng.exponential(MEAN_GAP_DAYS * 86400))
            d, i = events[k]
            day = datetime.fromtimestamp(t, tz=UTC)
            reviews.append(
                {
                    "overall": float(rng.integers(3, 6)),
                    "verified": True,
                    "reviewTime": f"{day.month:02d} {day.day}, {day.year}",
                    "reviewerID": user,
                    "asin": items[d][i]["asin"],
                    "unixReviewTime": t,
                    "_domain": d,
                }
            )
    return reviews, user_taste


def generate(spec: SyntheticSpec) -> tuple[dict[str, list[dict]], dict[str, list[dict]], dict]:
    """(metadata per domain, reviews per domain, truth) for ``spec``; pure and deterministic."""
    rng = np.random.default_rng(spec.seed)
    ids = _asins(rng, spec.n_items_a + spec.n_items_b, "B0", 10)
    order = {"A": ids[: spec.n_items_a], "B": ids[spec.n_items_a :]}
    items = {d: _items(rng, spec, d, len(order[d]), order[d]) for d in ("A", "B")}
    reviews, user_taste = _users(rng, spec, items)
    truth = {
        "user_taste": user_taste,
        "item_taste": {item["asin"]: item["_taste"] for d in ("A", "B") for item in items[d]},
        "taste_words": taste_words(spec.n_tastes),
    }
    by_domain = {d: [r for r in reviews if r["_domain"] == d] for d in ("A", "B")}
    return items, by_domain, truth


# ---- files -------------------------------------------------------------------------------------


def _stamp(spec: SyntheticSpec) -> dict:
    return {"generator_version": GENERATOR_VERSION, "spec": spec.model_dump(mode="json")}


def _write_jsonl_gz(records: list[dict], path: Path) -> None:
    """Gzip JSON lines without a timestamp in the header (reproducible bytes); private keys dropped."""
    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as fh:
            for record in records:
                public = {k: v for k, v in record.items() if not k.startswith("_")}
                fh.write((json.dumps(public) + "\n").encode())


def ensure_generated(spec: SyntheticSpec, out_dir: Path) -> bool:
    """Write the demo files unless ``out_dir`` already holds them for this spec; True if written."""
    stamp_path = out_dir / "spec.json"
    names = [f for files in FILES.values() for f in (files.reviews, files.meta)] + ["truth.json"]
    if stamp_path.is_file() and all((out_dir / n).is_file() for n in names):
        if json.loads(stamp_path.read_text()) == _stamp(spec):
            return False
    stamp_path.unlink(missing_ok=True)
    items, reviews, truth = generate(spec)
    for d, files in FILES.items():
        _write_jsonl_gz(reviews[d], out_dir / files.reviews)
        _write_jsonl_gz(items[d], out_dir / files.meta)
    write_json(truth, out_dir / "truth.json")
    write_json(_stamp(spec), stamp_path)  # last: a crash before this regenerates next time
    return True


def load_truth(out_dir: Path) -> dict:
    """Latent tastes written by :func:`ensure_generated`."""
    path = out_dir / "truth.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run the raw_interactions stage of the synthetic dataset first")
    return json.loads(path.read_text())
