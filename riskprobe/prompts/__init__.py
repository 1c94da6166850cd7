"""Prompts: the labelled sets (registry, built-in set, public-set loaders, user JSONL, id-hash splits), the
strict grader, and the given-answer sets."""

from . import (
    generated,  # noqa: F401  (registers the generated sets)
    public,  # noqa: F401  (registers the newer public sets)
)
from .grading import grade, is_correct
from .sets import (
    ANSWER_KINDS,
    CATEGORIES,
    REGISTRY,
    Item,
    arithmetic_items,
    jsonl_items,
    load_items,
    split_of,
)

__all__ = [
    "ANSWER_KINDS",
    "CATEGORIES",
    "Item",
    "REGISTRY",
    "arithmetic_items",
    "grade",
    "is_correct",
    "jsonl_items",
    "load_items",
    "split_of",
]
