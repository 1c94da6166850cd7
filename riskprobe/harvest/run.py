"""Harvest: generate answers to labelled prompts, grade them, then extract their signatures (two phases).

Layout of a harvest directory ``OUT``::

    OUT/generations/            phase one: the corpus of graded answers (:mod:`riskprobe.harvest.generations`)
    OUT/riskprobe.json          manifest: model identity, prompts, config, feature schema, versions, counts
    OUT/shards/shard-00000/     one finished shard (a `datasets` dataset), renamed into place when complete
    OUT/state.json, data-*.arrow, dataset_info.json
                                the merged dataset, so that ``datasets.load_from_disk(OUT)`` works

Phase two (:mod:`riskprobe.harvest.extract`) teacher-forces the corpus's answers through the model. Both
phases write fixed slices, so a rerun with the same configuration skips finished shards and redoes only the
unfinished one, and rank ``r`` of ``W`` (``torchrun``) takes shards ``i % W == r``: one process or many,
killed or not, the merged dataset is the same.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path

from ..errors import UserError
from ..fsutil import atomic_write_json
from ..models import load_model
from ..models.loader import resolve_batch_size, set_threads
from ..prompts import sets as P
from ..signatures import FeatureSpec
from .config import HarvestConfig
from .extract import (
    clear_stale_shards,
    corpus_config,
    extract_corpus,
    harvest_manifest,
    open_harvest,
    write_harvest_shard,
)
from .generations import check_corpus_out, corpus_manifest, generate_corpus, read_corpus_manifest
from .shards import GENERATIONS, abandon, dist_rank, package_versions, render_items
from .store import MANIFEST, dataset_features, hf_features, read_manifest, shard_folder

__all__ = ["harvest", "generate", "dist_rank", "set_threads", "render_items"]

log = logging.getLogger(__name__)


def harvest(cfg: HarvestConfig, *, lm=None, progress: bool = True, merge: bool = True) -> Path:
    """Run a harvest in two phases and return its directory (see the module doc).

    Phase one generates and grades the answers into the corpus ``OUT/generations`` (:func:`generate`); phase
    two extracts their signatures by teacher forcing into ``OUT`` (:func:`~riskprobe.harvest.extract.extract_corpus`).
    Both resume where they stopped.

    Args:
        cfg: the configuration.
        lm: an already loaded model (a :class:`~riskprobe.models.LoadedModel`); loaded from ``cfg.model``
            when omitted.
        progress: show progress bars.
        merge: merge the shards into the dataset at the end (rank 0, once all shards are there).
    """
    cfg.validate()  # the feature spec included
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError("exists and is not a folder; choose another --out", file=out, field="out")
    rank, world = dist_rank()
    set_threads(cfg.threads)
    items = _items(cfg)
    if lm is None:
        lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    spec = FeatureSpec.from_dict(cfg.features).resolve(lm)
    rendered, truncated, lengths = render_items(lm, items, cfg)
    cfg = replace(cfg, batch_size=resolve_batch_size(cfg.batch_size, lm, seq_len=max(lengths, default=0) + cfg.max_new_tokens,
                                                     steps=spec.steps))
    gen_dir = out / GENERATIONS
    gen_cfg = replace(cfg, out=str(gen_dir))
    samples = cfg.answers_per_question
    cm = corpus_manifest(gen_cfg, lm, items, versions=package_versions(), truncated=truncated)
    ecfg = corpus_config(cm, batch_size=cfg.batch_size, shard_size=cfg.shard_size * samples, out=str(out),
                         features=dict(cfg.features))
    created = not out.exists()
    if rank == 0:  # both folders are checked before either is written to
        check_corpus_out(gen_dir, cm)
    open_harvest(out, harvest_manifest(cm, lm, spec, ecfg), rank)  # refuses other settings before any work
    features = dataset_features(hf_features(spec))
    clear_stale_shards(out / "shards", [s for s in range(cm["n_shards"]) if s % world == rank])

    def on_shard(s, rows, sigs):  # the first extraction, captured while generating
        write_harvest_shard(shard_folder(out / "shards", s), items, rendered, rows, sigs, samples, features)

    try:
        generate_corpus(gen_cfg, lm, items, rendered, lengths, gen_dir, progress=progress, rank=rank, world=world,
                        versions=cm["versions"], truncated=truncated, capture=spec, on_shard=on_shard)
        t0 = time.perf_counter()
        # shards whose answers were generated earlier (a corpus made by `riskprobe generate`) are extracted by
        # teacher forcing; then the merge
        extract_corpus(gen_dir, out, features=cfg.features, lm=lm, batch_size=cfg.batch_size,
                       shard_size=cfg.shard_size * samples, progress=progress, merge=merge)
    except BaseException as e:
        if rank == 0:
            abandon(out, created, e)
        raise
    if merge and rank == 0:
        m, g = read_manifest(out), read_corpus_manifest(gen_dir)
        gt = g.get("timing") or {"tokens": 0, "seconds": 0.0}
        ext_s = round(time.perf_counter() - t0, 3)
        m.update(timing={"tokens": gt["tokens"], "seconds": round(gt["seconds"] + ext_s, 3),
                         "generate_seconds": gt["seconds"], "extract_seconds": ext_s})
        atomic_write_json(out / MANIFEST, m)
    return out


def _items(cfg: HarvestConfig):
    if cfg.datasets_root:
        os.environ["RISKPROBE_DATASETS"] = cfg.datasets_root
    items = P.load_items(cfg.prompts, limit=cfg.limit, seed=cfg.seed)
    if not items:
        raise UserError(f"prompt set '{cfg.prompts}' has no items", field="prompts")
    return items


def generate(cfg: HarvestConfig, *, lm=None, progress: bool = True, reuse: str | Path | None = None) -> Path:
    """Phase one alone: generate and grade answers into the corpus folder ``cfg.out`` (resumable; see
    :mod:`riskprobe.harvest.generations`). ``cfg.features`` is not used. ``reuse``: an earlier corpus of the
    same model and settings whose answers are taken over instead of generated again."""
    cfg.validate()
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError("exists and is not a folder; choose another --out", file=out, field="out")
    items = _items(cfg)
    rank, world = dist_rank()
    set_threads(cfg.threads)
    if lm is None:
        lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    rendered, truncated, lengths = render_items(lm, items, cfg)
    cfg = replace(cfg, batch_size=resolve_batch_size(cfg.batch_size, lm, seq_len=max(lengths, default=0) + cfg.max_new_tokens,
                                                     steps=1))
    return generate_corpus(cfg, lm, items, rendered, lengths, out, progress=progress, rank=rank, world=world,
                           versions=package_versions(), truncated=truncated, reuse=reuse)
