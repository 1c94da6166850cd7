"""The harvest file contract: the manifest, the shards, the merge, and the zero-copy reader.

Layout of a harvest directory ``OUT``::

    OUT/riskprobe.json          manifest: model identity, prompts, config, feature schema, versions, counts
    OUT/shards/shard-00000/     one finished shard (a `datasets` dataset), renamed into place when complete
    OUT/state.json, data-*.arrow, dataset_info.json
                                the merged dataset, so that ``datasets.load_from_disk(OUT)`` works

Every later stage reads harvests through this module (:func:`load_harvests`, :func:`signature_tensors`,
:func:`read_manifest`), never through the harvest loop."""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..fsutil import atomic_dir, atomic_write_json
from ..models.loader import same_model

MANIFEST = "riskprobe.json"


HARVEST_VERSION = 1


def _write_shard(path: Path, rows: list[dict[str, Any]], features) -> None:
    import datasets

    datasets.disable_progress_bars()
    with atomic_dir(path, replace=True) as tmp:
        ds = datasets.Dataset.from_list(rows, features=features)
        ds.save_to_disk(str(tmp))


def hf_features(spec) -> dict[str, Any]:
    """``datasets`` feature types for a resolved :class:`~riskprobe.signatures.FeatureSpec`'s signature
    columns (fixed-shape arrays)."""
    import datasets as hd

    out: dict[str, Any] = {}
    for name, (shape, dtype, _) in spec.shapes().items():
        if len(shape) == 1:
            out[name] = hd.Sequence(hd.Value(dtype), length=shape[0])
        elif len(shape) == 2:
            out[name] = hd.Array2D(shape=shape, dtype=dtype)
        else:
            out[name] = hd.Array3D(shape=shape, dtype=dtype)
    return out


def _features(extra=None):
    import datasets as hd

    f = {
        "index": hd.Value("int64"), "id": hd.Value("string"), "set": hd.Value("string"),
        "category": hd.Value("string"), "prompt": hd.Value("string"), "input_text": hd.Value("string"),
        "answers": hd.Sequence(hd.Value("string")), "answer_kind": hd.Value("string"),
        "response": hd.Value("string"), "correct": hd.Value("bool"), "label": hd.Value("int8"),
        "echo_discounted": hd.Value("bool"), "n_tokens": hd.Value("int32"), "finish": hd.Value("string"),
        "split": hd.Value("string"), "sample": hd.Value("int32"),
    }
    f.update(extra or {})
    return hd.Features(f)


# -------------------------------------------------------------------------------------------- manifest
def read_manifest(out: str | Path) -> dict[str, Any]:
    """The manifest of a harvest directory (raises a UserError when there is none)."""
    from ..errors import check_version
    from ..fsutil import read_text
    from ..signatures.spec import normalise_schema

    p = Path(out) / MANIFEST
    if not p.is_file():
        raise UserError(f"not a riskprobe harvest (no {MANIFEST})", file=out)
    try:
        m = json.loads(read_text(p))
    except (ValueError, RecursionError) as e:
        raise UserError(f"damaged manifest ({str(e)[:80]})", file=p) from None
    if not isinstance(m, dict):
        raise UserError("damaged manifest (not a JSON object)", file=p)
    legacy = m.pop("harvest_version", None)  # the name older harvests used
    m["version"] = check_version(m.get("version", legacy), HARVEST_VERSION, kind="harvest", file=p)
    if isinstance(m.get("feature_schema"), dict):
        m["feature_schema"] = normalise_schema(m["feature_schema"], file=p)
    return m


def merge_shards(out: str | Path, n_shards: int | None = None) -> "Any":
    """Merge the finished shards of ``out`` into one dataset, ordered by item index, and finish the manifest."""
    import datasets

    datasets.disable_progress_bars()
    out = Path(out)
    manifest = read_manifest(out)
    shard_dir = out / "shards"
    names = sorted(p.name for p in shard_dir.glob("shard-*") if (p / "state.json").is_file())
    if n_shards is not None and len(names) != n_shards:
        raise UserError(f"{n_shards - len(names)} shards are unfinished; rerun the harvest to complete them", file=out)
    ds = datasets.concatenate_datasets([datasets.load_from_disk(str(shard_dir / n)) for n in names])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # pyarrow's deprecation inside datasets' sort
        ds = ds.sort("index")
    tmp = out / ".merge.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    ds.save_to_disk(str(tmp))
    for old in list(out.glob("data-*.arrow")) + [out / "state.json"]:
        old.unlink(missing_ok=True)
    for f in sorted(tmp.iterdir(), key=lambda p: p.name == "state.json"):  # state.json last
        os.replace(f, out / f.name)
    tmp.rmdir()
    timings = [json.loads(p.read_text()) for p in shard_dir.glob("timing-rank*.json")]
    manifest.update(status="complete", n_rows=len(ds), summary=summarize(ds),
                    timing={"tokens": sum(t["tokens"] for t in timings),
                            "seconds": max((t["seconds"] for t in timings), default=0.0)})
    atomic_write_json(out / MANIFEST, manifest)
    return datasets.load_from_disk(str(out))


def _leaf_values(arr):
    """The flat primitive values of a (nested, fixed-shape) arrow array, without copying."""
    import pyarrow as pa

    if isinstance(arr.type, pa.ExtensionType):
        arr = arr.storage
    while not pa.types.is_primitive(arr.type) and not pa.types.is_boolean(arr.type):
        arr = arr.flatten() if pa.types.is_fixed_size_list(arr.type) else arr.values.slice(
            arr.offsets[0].as_py(), arr.offsets[-1].as_py() - arr.offsets[0].as_py())
    return arr


def signature_tensors(ds, columns: list[str] | None = None) -> dict[str, "Any"]:
    """Signature columns of a harvest dataset as torch tensors ``[N, *shape]`` in their stored dtype.

    Fixed-shape float columns are read straight from the memory-mapped arrow buffers (zero-copy: the
    tensor shares memory with the file mapping, read-only) when the dataset is one contiguous chunk;
    otherwise the chunks are concatenated once.
    """
    import numpy as np
    import torch

    from ..signatures.spec import FAMILIES

    columns = columns or [c for c in (*FAMILIES, "step_mask") if c in ds.column_names]
    out = {}
    table = ds.with_format(None).data
    if ds._indices is not None:  # a selected/shuffled view: materialise it once
        table = ds.flatten_indices().data
    for name in columns:
        feat = ds.features[name]
        shape = tuple(getattr(feat, "shape", None) or (feat.length,))
        parts = []
        for chunk in table.column(name).chunks:
            vals = _leaf_values(chunk)
            if vals.type == "bool" or str(vals.type) == "bool":
                parts.append(np.asarray(vals.to_pylist(), dtype=bool))
            else:
                parts.append(vals.to_numpy(zero_copy_only=True))
        flat = parts[0] if len(parts) == 1 else np.concatenate(parts)
        arr = flat.reshape(len(ds), *shape)
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # read-only memory map: torch warns that it is not writable
                out[name] = torch.from_numpy(arr)
    return out


def summarize(ds) -> dict[str, dict[str, float]]:
    """Per set: rows, correct rate, and the rate of answers discounted as question echoes."""
    acc: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for s, c, e in zip(ds["set"], ds["correct"], ds["echo_discounted"]):
        a = acc[s]
        a[0] += 1
        a[1] += int(c)
        a[2] += int(e)
    return {s: {"n": n, "correct_rate": round(c / n, 4), "echo_rate": round(e / n, 4)} for s, (n, c, e) in sorted(acc.items())}


@dataclass
class Harvests:
    """Rows of one or more compatible harvests, with their signature tensors."""

    meta: dict[str, list]  # id, set, category, label, split, ...
    tensors: dict[str, torch.Tensor]
    schema: dict[str, Any]
    model: dict[str, Any]
    paths: list[str]

    def __len__(self) -> int:
        return len(self.meta["id"])

    def fingerprint(self) -> str:
        from ..fsutil import stable_hash

        return stable_hash(json.dumps({"ids": sorted(self.meta["id"]), "model": self.model.get("fingerprint"),
                                       "schema": self.schema}, sort_keys=True, default=str))


def load_harvests(paths: list[str | Path]) -> Harvests:
    """Load and concatenate harvests; refuse ones whose models or feature schemas differ."""
    import datasets

    from .store import MANIFEST, signature_tensors

    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise UserError("no harvest given (--data.paths '[DIR, ...]')", field="data.paths")
    metas, tens, first = [], [], None
    for p in paths:
        p = Path(p)
        if not (p / MANIFEST).is_file():
            raise UserError(f"not a riskprobe harvest (no {MANIFEST}); run `riskprobe harvest --out {p}` first",
                            file=p, field="data.paths")
        m = read_manifest(p)
        if m.get("status") != "complete":
            raise UserError("harvest is not complete; rerun the harvest command to finish it", file=p)
        if first is None:
            first = (p, m)
        else:
            p0, m0 = first
            if not same_model(m["model"], m0["model"]):
                raise UserError(f"harvests of different models cannot be mixed: {m['model']['name']} here, "
                                f"{m0['model']['name']} in {p0}", file=p, field="data.paths")
            if m["feature_schema"] != m0["feature_schema"]:
                diff = [k for k in set(m["feature_schema"]) | set(m0["feature_schema"])
                        if m["feature_schema"].get(k) != m0["feature_schema"].get(k)]
                raise UserError(f"feature schemas differ from {p0} ({', '.join(sorted(diff)[:4])})", file=p,
                                field="data.paths")
        ds = datasets.load_from_disk(str(p))
        cols = [c for c in ("id", "set", "category", "label", "correct", "n_tokens", "prompt", "response")
                if c in ds.column_names]
        meta_p = {c: list(ds[c]) for c in cols}
        # a row is (question, sample, source): a generation harvest's rows are the model's own answers
        for c, default in (("sample", 0), ("provenance", "own"), ("source", "own")):
            meta_p[c] = list(ds[c]) if c in ds.column_names else [default] * len(ds)
        metas.append(meta_p)
        tens.append(signature_tensors(ds))
    meta = {c: sum((m[c] for m in metas), []) for c in metas[0] if all(c in m for m in metas)}
    tensors = {k: torch.cat([t[k] for t in tens]) if len(tens) > 1 else tens[0][k] for k in tens[0]}
    if len(paths) > 1:  # an answer harvested twice counts once: the first harvest's row is kept
        seen: set[tuple] = set()
        rows = zip(meta["id"], meta["sample"], meta["source"])
        keep = [i for i, key in enumerate(rows) if not (key in seen or seen.add(key))]
        if len(keep) < len(meta["id"]):
            meta = {c: [v[i] for i in keep] for c, v in meta.items()}
            idx = torch.as_tensor(keep)
            tensors = {k: v[idx] for k, v in tensors.items()}
    _, m0 = first
    return Harvests(meta, tensors, m0["feature_schema"], m0["model"], [str(p) for p in paths])
