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
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import torch

from ..errors import UserError, check_version
from ..fsutil import atomic_dir, atomic_write_json, read_text, stable_hash
from ..models.loader import same_model
from ..prompts.sets import split_of
from ..signatures.spec import FAMILIES, normalise_schema

MANIFEST = "riskprobe.json"


HARVEST_VERSION = 1


def new_manifest(*, model: dict[str, Any], feature_schema: dict[str, Any], prompts: str, n_items: int,
                 items_fingerprint: str, versions: dict[str, str], **extra: Any) -> dict[str, Any]:
    """A harvest's manifest (``riskprobe.json``): what every harvest records (the model's identity, the feature
    schema, the prompts and a fingerprint of their items, the package versions), and the sections of one kind of
    harvest in ``extra`` (a generation harvest's config, a given-answer harvest's counts)."""
    return {"kind": "harvest", "version": HARVEST_VERSION, "model": model, "prompts": prompts, "n_items": n_items,
            "feature_schema": feature_schema, "versions": versions, "items_fingerprint": items_fingerprint, **extra}


def harvest_row(*, index: int, id: str, set: str, category: str, prompt: str, input_text: str, answers: list[str],
                answer_kind: str, response: str, label: int, n_tokens: int, finish: str, sample: int,
                echo_discounted: bool = False, **extra: Any) -> dict[str, Any]:
    """One harvest row without its signature columns (:func:`dataset_features` is its schema): ``correct`` and the
    question's ``split`` follow from the label and the id; ``extra`` holds the columns of one kind of harvest."""
    return {"index": int(index), "id": id, "set": set, "category": category, "prompt": prompt, "input_text": input_text,
            "answers": list(answers), "answer_kind": answer_kind, "response": response, "correct": not label,
            "label": int(label), "echo_discounted": bool(echo_discounted), "n_tokens": int(n_tokens), "finish": finish,
            "split": split_of(id), "sample": int(sample), **extra}


def shard_folder(shards: Path, s: int) -> Path:
    """Shard ``s`` of a harvest's ``shards`` folder: a `datasets` dataset, renamed into place once complete."""
    return shards / f"shard-{s:05d}"


def shard_finished(shards: Path, s: int) -> bool:
    return (shard_folder(shards, s) / "state.json").is_file()


def stale_shards(shards: Path, s: int) -> list[Path]:
    """The temporary folders of shard ``s`` that a killed run left (never renamed into place, so never finished)."""
    return list(shards.glob(f".{shard_folder(shards, s).name}.*.tmp"))


def write_rows(path: Path, rows: list[dict[str, Any]], features) -> None:
    """Write rows (signature columns as numpy arrays) as one shard, a `datasets` dataset folder."""
    schema = features.arrow_schema
    table = pa.Table.from_arrays([_arrow_column([r[f.name] for r in rows], f.type) for f in schema], schema=schema)
    with atomic_dir(path, replace=True) as tmp:
        _write_dataset(tmp, schema, [lambda: table])


def _arrow_column(values: list, typ) -> "Any":
    """An arrow column of ``typ`` from one value per row. Arrays (a fixed-shape signature column) are stacked
    and handed to arrow as one buffer: no Python object per number, so a shard costs about its own size in
    memory (building it through ``Dataset.from_list`` took seven times that)."""
    if not values or not isinstance(values[0], np.ndarray):
        return pa.array(values, type=typ)
    arr = np.ascontiguousarray(np.stack(values))
    flat = pa.array(arr.reshape(-1))
    if isinstance(typ, pa.ExtensionType):  # datasets' ArrayND: nested lists in the storage
        for d in reversed(arr.shape[1:]):
            flat = pa.ListArray.from_arrays(pa.array(np.arange(len(flat) // d + 1, dtype=np.int32) * d), flat)
        return pa.ExtensionArray.from_storage(typ, flat.cast(typ.storage_type))
    return pa.FixedSizeListArray.from_arrays(flat, arr.shape[1]).cast(typ)


def _write_dataset(folder: Path, schema, parts, batch_bytes: int = 16 << 20) -> None:
    """Write a `datasets` dataset folder (what ``Dataset.save_to_disk`` writes: one arrow stream file, its
    ``state.json`` and ``dataset_info.json``) from ``parts``, callables that each return an arrow table of
    ``schema``, read one after another. Consecutive small parts are joined into record batches of up to about
    ``batch_bytes`` (a small harvest is one batch, which the reader maps without copying); a part that fills a
    batch alone is written as it is. Writing therefore holds at most one part or about two batches in memory,
    whatever the dataset's size (``save_to_disk`` holds several copies of all it writes; 64 MB batches here
    made a 600-answer SmolLM2 harvest's merge hold the whole harvest twice). The two small files come from
    ``save_to_disk`` of the first row."""
    datasets.disable_progress_bars()
    folder = Path(folder)
    pending: list = []

    def flush(w) -> None:
        w.write_table(pending[0] if len(pending) == 1 else pa.concat_tables(pending).combine_chunks())
        pending.clear()

    with pa.OSFile(str(folder / ".data.arrow"), "wb") as fh, pa.ipc.new_stream(fh, schema) as w:
        for part in parts:
            table = part()
            if not (folder / "state.json").is_file():
                datasets.Dataset(table.slice(0, 1)).save_to_disk(str(folder))
            if pending and sum(t.nbytes for t in pending) + table.nbytes > batch_bytes:
                flush(w)
            pending.append(table)
            del table  # pending holds it; the name would keep it alive through the next part's read
            if sum(t.nbytes for t in pending) >= batch_bytes:
                flush(w)
        if pending:
            flush(w)
    files = [f["filename"] for f in json.loads((folder / "state.json").read_text())["_data_files"]]
    if len(files) != 1:  # the layout this relies on; a datasets release that changes it fails here, not silently
        raise RuntimeError(f"datasets wrote {len(files)} data files for one row; expected one")
    os.replace(folder / ".data.arrow", folder / files[0])


def hf_features(spec) -> dict[str, Any]:
    """``datasets`` feature types for a resolved :class:`~riskprobe.signatures.FeatureSpec`'s signature
    columns (fixed-shape arrays)."""
    out: dict[str, Any] = {}
    for name, (shape, dtype, _) in spec.shapes().items():
        if len(shape) == 1:
            out[name] = datasets.Sequence(datasets.Value(dtype), length=shape[0])
        elif len(shape) == 2:
            out[name] = datasets.Array2D(shape=shape, dtype=dtype)
        else:
            out[name] = datasets.Array3D(shape=shape, dtype=dtype)
    return out


def dataset_features(extra=None):
    """The `datasets` schema of a harvest's rows: the row columns every harvest holds (id, set, prompt, response,
    label, split, ...) and, from ``extra`` (:func:`hf_features` of a feature spec, and columns of one harvest kind such
    as the given-answer harvest's ``provenance`` and ``source``), the signature columns."""
    f = {
        "index": datasets.Value("int64"), "id": datasets.Value("string"), "set": datasets.Value("string"),
        "category": datasets.Value("string"), "prompt": datasets.Value("string"), "input_text": datasets.Value("string"),
        "answers": datasets.Sequence(datasets.Value("string")), "answer_kind": datasets.Value("string"),
        "response": datasets.Value("string"), "correct": datasets.Value("bool"), "label": datasets.Value("int8"),
        "echo_discounted": datasets.Value("bool"), "n_tokens": datasets.Value("int32"), "finish": datasets.Value("string"),
        "split": datasets.Value("string"), "sample": datasets.Value("int32"),
    }
    f.update(extra or {})
    return datasets.Features(f)


# -------------------------------------------------------------------------------------------- manifest
def read_manifest(out: str | Path) -> dict[str, Any]:
    """The manifest of a harvest directory (raises a UserError when there is none)."""
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
    datasets.disable_progress_bars()
    out = Path(out)
    manifest = read_manifest(out)
    shard_dir = out / "shards"
    names = sorted(p.name for p in shard_dir.glob("shard-*") if (p / "state.json").is_file())
    if n_shards is not None and len(names) != n_shards:
        raise UserError(f"{n_shards - len(names)} shards are unfinished; rerun the harvest to complete them", file=out)
    tmp = out / ".merge.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shards = [datasets.load_from_disk(str(shard_dir / n)) for n in names]  # memory-mapped, nothing read yet
    index = [i for d in shards for i in d["index"]]
    if all(a < b for a, b in zip(index, index[1:])):
        # shards are slices of the items, so they are already in order: stream them one at a time (the merge
        # holds one shard in memory, whatever the harvest's size)
        schema = shards[0].features.arrow_schema
        tmp.mkdir()
        _write_dataset(tmp, schema, [lambda n=n: _read_shard_table(shard_dir / n, schema) for n in names])
    else:

        ds = datasets.concatenate_datasets(shards)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # pyarrow's deprecation inside datasets' sort
            ds = ds.sort("index")
        ds.save_to_disk(str(tmp))
        del ds
    del shards
    for old in list(out.glob("data-*.arrow")) + [out / "state.json"]:
        old.unlink(missing_ok=True)
    for f in sorted(tmp.iterdir(), key=lambda p: p.name == "state.json"):  # state.json last
        os.replace(f, out / f.name)
    tmp.rmdir()
    timings = [json.loads(p.read_text()) for p in shard_dir.glob("timing-rank*.json")]
    ds = datasets.load_from_disk(str(out))
    manifest.update(status="complete", n_rows=len(ds), summary=summarize(ds),
                    timing={"tokens": sum(t["tokens"] for t in timings),
                            "seconds": max((t["seconds"] for t in timings), default=0.0)})
    atomic_write_json(out / MANIFEST, manifest)
    return ds


def _read_shard_table(folder: Path, schema) -> "Any":
    """A finished shard's rows as one arrow table in memory (its files are read, not mapped)."""
    state = json.loads((folder / "state.json").read_text())
    tables = []
    for f in state["_data_files"]:
        with pa.OSFile(str(folder / f["filename"]), "rb") as fh:
            tables.append(pa.ipc.open_stream(fh).read_all())
    return pa.concat_tables(tables).cast(schema)


def _leaf_values(arr):
    """The flat primitive values of a (nested, fixed-shape) arrow array, without copying."""
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
        return stable_hash(json.dumps({"ids": sorted(self.meta["id"]), "model": self.model.get("fingerprint"),
                                       "schema": self.schema}, sort_keys=True, default=str))


def load_harvests(paths: list[str | Path]) -> Harvests:
    """Load and concatenate harvests; refuse ones whose models or feature schemas differ."""
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
