"""Harvest: generate answers to labelled prompts, grade them, and store rows with their signatures.

``config`` (what a harvest is), ``run`` (the loop: shards, resume, ranks), ``store`` (the file contract:
manifest, shards, merge, reader). Later stages import ``store`` only."""

from .config import HarvestConfig, load_config
from .run import dist_rank, harvest, set_threads
from .store import (
    MANIFEST,
    Harvests,
    load_harvests,
    merge_shards,
    read_manifest,
    signature_tensors,
)

__all__ = [
    "HarvestConfig",
    "Harvests",
    "MANIFEST",
    "dist_rank",
    "harvest",
    "load_config",
    "load_harvests",
    "merge_shards",
    "read_manifest",
    "set_threads",
    "signature_tensors",
]
