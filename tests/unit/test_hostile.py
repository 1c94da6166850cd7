"""Hostile input, table-driven, across every entry point of the ``riskprobe`` command.

Each case builds its input files in a fresh folder, runs the command in-process with that folder as the
working directory, and asserts: exit status 2, exactly one line on stderr naming the file (and line or
field where there is one), no traceback, nothing left on disk, and every file that was there unchanged.
The JSONL readers are also fuzzed (hypothesis, bounded examples): they never raise anything but UserError.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synth import make_artifact, make_harvest

from riskprobe.cli import main
from riskprobe.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
FIT_CFG = str(ROOT / "configs" / "fit" / "default.yaml")
GOOD = {"id": "q1", "question": "What is one?", "answers": ["1"]}
BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n" \
       "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"


def _tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        key = str(p.relative_to(root))
        out[key] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else "dir"
    return out


def _w(path: Path, data) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return str(path)


def _jsonl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def _cfg(extra: str) -> str:
    return "version: 1\nmax_new_tokens: 3\nbatch_size: 2\nfeatures:\n  K: 2\n  lens_steps: 1\n  raw_steps: 1\n" + extra


class Ctx:
    """What a case may need: a working folder, a tiny model directory, a probe artifact, a harvest."""

    def __init__(self, d: Path, model_dir: Path, artifact: Path, harvest: Path, own_art: Path, corpus: Path,
                 narrow: Path):
        self.d, self.model, self.art, self.h = d, str(model_dir), str(artifact), str(harvest)
        # a probe trained on its model's own answers only; a corpus of the tiny model; a harvest of it with fewer
        # families than the artifact reads
        self.own_art, self.corpus, self.narrow = str(own_art), str(corpus), str(narrow)

    def corpus_copy(self, edit_row) -> str:
        import gzip

        dst = self.d / "corpus"
        dst.mkdir()
        for f in Path(self.corpus).iterdir():
            (dst / f.name).write_bytes(f.read_bytes())
        shard = dst / "shard-00000.jsonl.gz"
        rows = [json.loads(x) for x in gzip.decompress(shard.read_bytes()).decode().splitlines()]
        edit_row(rows[0])
        shard.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
        return str(dst)

    def scored_row(self, **row) -> str:
        base = {"id": "a", "prompt": "Q?", "risk": 0.5, "flagged": False, "teacher_forced": False,
                "model": {"name": "tiny"}}
        return self.f("scored.jsonl", _jsonl({**base, **row}))

    def f(self, name, data) -> str:
        return _w(self.d / name, data)

    def folder(self, name) -> str:
        (self.d / name).mkdir()
        return str(self.d / name)

    def harvest(self, *extra, prompts=None, cfg=None):
        p = prompts or self.f("p.jsonl", _jsonl(GOOD))
        c = cfg or self.f("h.yaml", _cfg(""))
        return ["harvest", "--config", c, "--model", self.model, "--prompts", p, "--out", str(self.d / "out"),
                "--device", "cpu", "--no-progress", *extra]

    def score(self, *extra, inp=None, output=None, probe=None):
        i = inp or self.f("in.jsonl", _jsonl({"id": "a", "prompt": "Q?"}))
        return ["score", "--probe", probe or self.art, "--model", self.model, "--input", i, "--output",
                output or str(self.d / "scored.jsonl"), "--no-progress", *extra]

    def probe_copy(self, edit=None, *, raw: str | bytes | None = None, drop: str | None = None) -> str:
        dst = self.d / "probe"
        dst.mkdir()
        for f in Path(self.art).iterdir():
            (dst / f.name).write_bytes(f.read_bytes())
        if edit is not None:
            meta = json.loads((dst / "probe.json").read_text())
            edit(meta)
            (dst / "probe.json").write_text(json.dumps(meta))
        if raw is not None:
            _w(dst / "probe.json", raw)
        if drop:
            (dst / drop).unlink()
        return str(dst)

    def fit(self, *extra, cfg=FIT_CFG):
        return ["fit", "--config", cfg, "--data.paths", f"[{self.h}]", "--trainer.default_root_dir",
                str(self.d / "run"), "--n_boot", "10", "--trainer.max_epochs", "1", *extra]

    def ckpt(self, obj) -> str:
        p = self.d / "x.ckpt"
        torch.save(obj, p)
        return str(p)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _evil_ckpt(c: Ctx) -> str:
    p = c.d / "evil.ckpt"
    with open(p, "wb") as f:
        pickle.dump({"state_dict": {}, "riskprobe": {}, "x": _Evil()}, f)
    return str(p)


# (name, argv builder, text the one error line must contain)
CASES = [
    # ------------------------------------------------------------------ harvest: config file
    ("harvest config missing", lambda c: c.harvest(cfg=str(c.d / "none.yaml")), "none.yaml: config file not found"),
    ("harvest config not utf-8", lambda c: c.harvest(cfg=c.f("b.yaml", b"model: \xff\xfe\n")), "b.yaml: not a UTF-8"),
    ("harvest config alias bomb", lambda c: c.harvest(cfg=c.f("b.yaml", BOMB)), "b.yaml:2: invalid YAML: YAML aliases"),
    ("harvest config bad yaml", lambda c: c.harvest(cfg=c.f("b.yaml", "limit: [\n")), "b.yaml:2: invalid YAML"),
    ("harvest config a list", lambda c: c.harvest(cfg=c.f("b.yaml", "- 1\n- 2\n")), "b.yaml: expected a mapping"),
    ("harvest config unknown key", lambda c: c.harvest(cfg=c.f("b.yaml", "modle: x\n")), "b.yaml:1: field 'modle': unknown key"),
    ("harvest config limit a string", lambda c: c.harvest(cfg=c.f("b.yaml", _cfg("limit: ten\n"))),
     "b.yaml:8: field 'limit': expected int or null, got str"),
    ("harvest config batch a bool", lambda c: c.harvest(cfg=c.f("b.yaml", "batch_size: true\n")),
     "b.yaml:1: field 'batch_size': expected int or str, got bool"),
    ("harvest config features a list", lambda c: c.harvest(cfg=c.f("b.yaml", "features: [1, 2]\n")),
     "b.yaml:1: field 'features': expected dict"),
    ("harvest config K negative", lambda c: c.harvest(cfg=c.f("b.yaml", "features: {K: -1}\n")),
     "b.yaml:1: field 'features.K': must be an integer from 0 to 4096"),
    ("harvest config families a string", lambda c: c.harvest(cfg=c.f("b.yaml", "features: {families: raw}\n")),
     "b.yaml:1: field 'features.families': expected a list"),
    ("harvest config layers a mapping", lambda c: c.harvest(cfg=c.f("b.yaml", "features: {layers: {a: 1}}\n")),
     "b.yaml:1: field 'features.layers': expected a layer set name"),
    ("harvest config version 2", lambda c: c.harvest(cfg=c.f("b.yaml", "version: 2\n")), "b.yaml:1: field 'version'"),
    ("harvest config temperature 0", lambda c: c.harvest(cfg=c.f("b.yaml", "temperature: 0\n")),
     "b.yaml:1: field 'temperature': must be in (0, 100]"),
    ("harvest config is a folder", lambda c: c.harvest(cfg=str(c.d)), "config file not found"),
    ("harvest config huge", lambda c: c.harvest(cfg=c.f("b.yaml", "# " + "x" * (1 << 21) + "\n")),
     "b.yaml: config file is larger than 1 MiB"),
    ("harvest config top_p a list", lambda c: c.harvest(cfg=c.f("b.yaml", "top_p: [1]\n")), "field 'top_p'"),
    ("harvest config threads 0", lambda c: c.harvest(cfg=c.f("b.yaml", "threads: 0\n")), "field 'threads'"),
    # ------------------------------------------------------------------ harvest: prompt files
    ("prompts missing", lambda c: c.harvest(prompts=str(c.d / "none.jsonl")), "none.jsonl: prompt file not found"),
    ("prompts not utf-8", lambda c: c.harvest(prompts=c.f("p.jsonl", b'{"id": "\xff"}\n')), "p.jsonl:1: not UTF-8"),
    ("prompts nested deep", lambda c: c.harvest(prompts=c.f("p.jsonl", "[" * 100_000 + "]" * 100_000 + "\n")),
     "p.jsonl:1: JSON nested too deeply"),
    ("prompts line not an object", lambda c: c.harvest(prompts=c.f("p.jsonl", "[1, 2]\n")), "p.jsonl:1: expected a JSON object"),
    ("prompts malformed", lambda c: c.harvest(prompts=c.f("p.jsonl", _jsonl(GOOD, '{"id": oops}'))), "p.jsonl:2: malformed JSON"),
    ("prompts empty question", lambda c: c.harvest(prompts=c.f("p.jsonl", _jsonl({"question": "  ", "answers": ["a"]}))),
     "p.jsonl:1: field 'question'"),
    ("prompts question a number", lambda c: c.harvest(prompts=c.f("p.jsonl", _jsonl({"question": 3, "answers": ["a"]}))),
     "p.jsonl:1: field 'question'"),
    ("prompts no answers", lambda c: c.harvest(prompts=c.f("p.jsonl", _jsonl({"question": "Q?"}))), "p.jsonl:1: field 'answers'"),
    ("prompts answers a dict", lambda c: c.harvest(prompts=c.f("p.jsonl", _jsonl({"question": "Q?", "answers": {"a": 1}}))),
     "p.jsonl:1: field 'answers'"),
    ("prompts bad category", lambda c: c.harvest(prompts=c.f("p.jsonl", _jsonl(dict(GOOD, category="poetry")))),
     "p.jsonl:1: field 'category'"),
    ("prompts bad answer kind", lambda c: c.harvest(prompts=c.f("p.jsonl", _jsonl(dict(GOOD, answer_kind="essay")))),
     "p.jsonl:1: field 'answer_kind'"),
    ("prompts duplicate id", lambda c: c.harvest(prompts=c.f("p.jsonl", _jsonl(GOOD, GOOD))), "p.jsonl:2: field 'id': duplicate"),
    ("prompts line of 2 MiB", lambda c: c.harvest(prompts=c.f("p.jsonl", '{"question": "' + "x" * (2 << 20) + '"}\n')),
     "p.jsonl:1: line longer than 1 MiB"),
    ("prompts question too long", lambda c: c.harvest(prompts=c.f("p.jsonl", _jsonl(dict(GOOD, question="w " * 60_000)))),
     "p.jsonl:1: field 'question': is 120000 characters"),
    ("prompts longer than context", lambda c: c.harvest(prompts=c.f("p.jsonl", _jsonl(dict(GOOD, question="word " * 200)))),
     "p.jsonl:1: field 'question': prompt of item 'q1'"),
    ("prompts unknown set", lambda c: c.harvest(prompts="no-such-set"), "field 'prompts': unknown prompt set"),
    ("prompts count not a number", lambda c: c.harvest(prompts="builtin:abc"),
     "field 'prompts': 'builtin:abc': the count after ':' must be a positive whole number"),
    ("prompts count 0", lambda c: c.harvest(prompts="builtin:0"), "'builtin:0': the count after ':' must be a positive"),
    ("prompts is a folder", lambda c: c.harvest(prompts=c.folder("dir.jsonl")), "dir.jsonl: prompt file not found"),
    # ------------------------------------------------------------------ harvest: options
    ("harvest limit 0", lambda c: c.harvest("--limit", "0"), "error: field '--limit': must be a positive integer"),
    ("harvest limit not a number", lambda c: c.harvest("--limit", "ten"), "argument --limit: invalid int value"),
    ("harvest max new tokens 0", lambda c: c.harvest("--max-new-tokens", "0"), "error: field '--max-new-tokens'"),
    ("harvest batch size negative", lambda c: c.harvest("--batch-size", "-4"), "argument --batch-size"),
    ("harvest batch size a word", lambda c: c.harvest("--batch-size", "lots"), "or auto, got 'lots'"),
    ("harvest config batch a word", lambda c: c.harvest(cfg=c.f("b.yaml", "batch_size: lots\n")),
     "b.yaml:1: field 'batch_size': must be a positive integer or auto"),
    ("harvest device cuda without cuda", lambda c: c.harvest("--device", "cuda"), "field 'device'"),
    ("harvest device unknown", lambda c: c.harvest("--device", "tpu7"), "error: field '--device'"),
    ("harvest dtype unknown", lambda c: c.harvest("--dtype", "int3"), "error: field '--dtype'"),
    ("harvest config duplicate key", lambda c: c.harvest(cfg=c.f("b.yaml", "limit: 2\nseed: 1\nlimit: 3\n")),
     "b.yaml:3: invalid YAML: duplicate key 'limit' (first on line 1)"),
    ("harvest config duplicate key on one line", lambda c: c.harvest(cfg=c.f("b.yaml", "features: {K: 2, K: 3}\n")),
     "b.yaml:1: invalid YAML: duplicate key 'K' (first on line 1)"),
    ("harvest config nested duplicate key", lambda c: c.harvest(cfg=c.f("b.yaml", "features:\n  K: 2\n  K: 3\n")),
     "b.yaml:3: invalid YAML: duplicate key 'K' (first on line 2)"),
    ("harvest config nested bad value line", lambda c: c.harvest(cfg=c.f("b.yaml", "seed: 1\nfeatures:\n  K: -1\n")),
     "b.yaml:3: field 'features.K'"),
    ("harvest layers unknown", lambda c: c.harvest("--layers", "bottom"), "error: field '--layers': unknown layer set"),
    ("harvest normalisation unknown", lambda c: c.harvest("--normalisation", "zscore"), "error: field '--normalisation'"),
    ("harvest K negative", lambda c: c.harvest("--K", "-3"), "error: field '--K'"),
    ("harvest out is a file", lambda c: c.harvest("--out", c.f("taken.txt", "mine")), "taken.txt: field 'out': exists and is not a folder"),
    ("harvest out is a user folder", lambda c: c.harvest("--out", str(Path(c.f("mine/notes.txt", "x")).parent)),
     "mine: output directory exists and is not a riskprobe harvest"),
    ("harvest out holds a user's generations folder", lambda c: (c.f("out/generations/notes.txt", "x"), c.harvest())[1],
     "generations: field 'out': exists and is not a riskprobe corpus"),
    ("harvest unknown model", lambda c: c.harvest("--model", "no-such-model"), "field 'model': unknown model"),
    ("harvest model dir without config", lambda c: c.harvest("--model", str(Path(c.f("m/readme", "x")).parent)),
     "m: not a model directory"),
    # ------------------------------------------------------------------ score
    ("score input missing", lambda c: c.score(inp=str(c.d / "none.jsonl")), "none.jsonl: field 'input': input file not found"),
    ("score output is input", lambda c: c.score(inp=c.f("in.jsonl", _jsonl({"prompt": "Q?"})), output=str(c.d / "in.jsonl")),
     "in.jsonl: field 'output': --output is the input file"),
    ("score output is a folder", lambda c: c.score(output=str(c.d)), "field 'output': is not a file"),
    ("score output a user text file", lambda c: c.score(output=c.f("notes.txt", "a\nb\nlast")),
     "notes.txt:1: field 'output': is not a riskprobe output row"),
    ("score output a binary file", lambda c: c.score(output=c.f("photo.jpg", bytes(range(256)) * 8)),
     "photo.jpg:1: field 'output': is not a riskprobe output row"),
    ("score duplicate ids", lambda c: c.score(inp=c.f("in.jsonl", _jsonl({"id": 1, "prompt": "A?"}, {"id": "1", "prompt": "B?"}))),
     "in.jsonl:2: field 'id': duplicate id '1' (first on line 1)"),
    ("score on-error fail", lambda c: c.score("--on-error", "fail", inp=c.f("in.jsonl", _jsonl({"prompt": "A?"}, "{bad"))),
     "in.jsonl:2: malformed JSON"),
    ("score on-error fail blank response", lambda c: c.score(
        "--on-error", "fail", inp=c.f("in.jsonl", _jsonl({"prompt": "A?", "response": "   "}))),
     "in.jsonl:1: field 'response'"),
    ("score on-error fail misspelt response", lambda c: c.score(
        "--on-error", "fail", inp=c.f("in.jsonl", _jsonl({"prompt": "A?", "respnse": "B"}))),
     "in.jsonl:1: field 'respnse': unknown; did you mean 'response'?"),
    ("score on-error fail per-row max_new_tokens", lambda c: c.score(
        "--on-error", "fail", inp=c.f("in.jsonl", _jsonl({"prompt": "A?", "max_new_tokens": 5}))),
     "in.jsonl:1: field 'max_new_tokens': not per request: set for the whole run (--max-new-tokens)"),
    ("score batch size 0", lambda c: c.score("--batch-size", "0"), "field 'batch-size'"),
    ("score max new tokens 0", lambda c: c.score("--max-new-tokens", "0"), "field 'max-new-tokens'"),
    ("score device cuda", lambda c: c.score("--device", "cuda"), "field 'device'"),
    ("score probe missing", lambda c: c.score(probe=str(c.d / "noprobe")), "noprobe: field 'probe': not a probe artifact"),
    ("probe json an array", lambda c: c.score(probe=c.probe_copy(raw="[1, 2]")), "probe.json: field 'probe.json': expected a JSON object"),
    ("probe json invalid", lambda c: c.score(probe=c.probe_copy(raw="{oops")), "probe.json:1: probe.json is not valid JSON"),
    ("probe json not utf-8", lambda c: c.score(probe=c.probe_copy(raw=b'{"a": "\xff"}')), "probe.json: not a UTF-8"),
    ("probe json nested deep", lambda c: c.score(probe=c.probe_copy(raw="[" * 100_000 + "]" * 100_000)),
     "probe.json is nested too deeply"),
    ("probe threshold edited", lambda c: c.score(probe=c.probe_copy(lambda m: m.update(threshold=2.0))),
     "field 'json_sha256': probe.json was modified"),
    ("probe model renamed", lambda c: c.score(probe=c.probe_copy(lambda m: m["model_identity"].update(name="gemma3-270m"))),
     "field 'json_sha256'"),
    ("probe keys missing (v1, loaded as old)", lambda c: c.score("--allow-old-artifact", probe=c.probe_copy(
        lambda m: (m.pop("version"), m.update(artifact_version=1), m.pop("json_sha256"), m.pop("feature_spec")))),
     "field 'feature_spec': missing"),
    # the tamper check is not turned off by dressing a probe as an old version
    ("probe renamed to v1, digest dropped", lambda c: c.score(probe=c.probe_copy(
        lambda m: (m.pop("version"), m.update(artifact_version=1, threshold=0.01), m.pop("json_sha256")))),
     "artifact version 1"),
    ("probe as v2 with an edited threshold", lambda c: c.score(probe=c.probe_copy(
        lambda m: (m.pop("version"), m.update(artifact_version=2, threshold=0.01)))), "artifact version 2"),
    ("probe as v2, edited, loaded as old", lambda c: c.score("--allow-old-artifact", probe=c.probe_copy(
        lambda m: (m.pop("version"), m.update(artifact_version=2, threshold=0.01)))), "json_sha256"),
    ("probe version newer", lambda c: c.score(probe=c.probe_copy(lambda m: m.update(version=99))),
     "field 'version': written by a newer riskprobe (artifact version 99"),
    ("probe onnx missing", lambda c: c.score(probe=c.probe_copy(drop="probe.onnx")), "probe.onnx is missing"),
    ("probe weights missing", lambda c: c.score(probe=c.probe_copy(drop="probe.safetensors")), "probe.safetensors is missing"),
    # ------------------------------------------------------------------ export
    ("export ckpt missing", lambda c: ["export", "--ckpt", str(c.d / "none.ckpt"), "--out", str(c.d / "p")],
     "none.ckpt: field 'ckpt': checkpoint not found"),
    ("export ckpt a text file", lambda c: ["export", "--ckpt", c.f("t.ckpt", "hello"), "--out", str(c.d / "p")],
     "t.ckpt: field 'ckpt': not a riskprobe checkpoint"),
    ("export ckpt a pickle with code", lambda c: ["export", "--ckpt", _evil_ckpt(c), "--out", str(c.d / "p")],
     "evil.ckpt: field 'ckpt': not a riskprobe checkpoint"),
    ("export ckpt without state_dict", lambda c: ["export", "--ckpt", c.ckpt({"riskprobe": {}}), "--out", str(c.d / "p")],
     "x.ckpt: field 'ckpt': not a riskprobe checkpoint (no riskprobe section or state_dict)"),
    ("export ckpt a list", lambda c: ["export", "--ckpt", c.ckpt([1, 2]), "--out", str(c.d / "p")], "not a riskprobe checkpoint"),
    ("export out a user folder", lambda c: ["export", "--ckpt", str(Path(c.art).parent / "final.ckpt"), "--out",
                                            str(Path(c.f("thesis/ch1.tex", "x")).parent)], "thesis: field 'out': exists and is a folder"),
    ("export out a file", lambda c: ["export", "--ckpt", str(Path(c.art).parent / "final.ckpt"), "--out", c.f("f.txt", "x")],
     "f.txt: field 'out': exists and is a file"),
    # ------------------------------------------------------------------ fit / test
    ("fit config alias bomb", lambda c: c.fit(cfg=c.f("f.yaml", BOMB)), "f.yaml:2: invalid YAML: YAML aliases"),
    ("fit config not utf-8", lambda c: c.fit(cfg=c.f("f.yaml", b"model:\n  hidden: \xff\n")), "f.yaml: not a UTF-8"),
    ("fit config a list", lambda c: c.fit(cfg=c.f("f.yaml", "- 1\n")), "f.yaml: expected a mapping"),
    ("fit config missing", lambda c: c.fit(cfg=str(c.d / "none.yaml")), "none.yaml: config file not found"),
    ("fit config newer", lambda c: c.fit(cfg=c.f("f.yaml", "version: 9\n")),
     "field 'version': written by a newer riskprobe (fit config version 9"),
    ("fit hidden a string", lambda c: c.fit("--model.hidden", "big"), "model.hidden"),
    ("fit unknown key", lambda c: c.fit("--model.vibes", "3"), "vibes"),
    ("fit harvest missing", lambda c: c.fit("--data.paths", f"[{c.d / 'nowhere'}]"), "nowhere: field 'data.paths'"),
    ("fit k out of range", lambda c: c.fit("--data.k", "99"), "field 'data.k': k = 99"),
    ("fit unknown family", lambda c: c.fit("--data.families", "[vibes]"), "unknown feature family 'vibes'"),
    ("fit into a user folder", lambda c: c.fit("--trainer.default_root_dir", str(Path(c.f("r/paper.docx", "x")).parent)),
     "r: field 'trainer.default_root_dir': exists and holds files"),
    ("test ckpt a pickle with code", lambda c: ["test", "--config", FIT_CFG, "--data.paths", f"[{c.h}]", "--ckpt_path",
                                               _evil_ckpt(c)], "evil.ckpt: field 'ckpt_path': not a riskprobe checkpoint"),
    ("test ckpt missing", lambda c: ["test", "--config", FIT_CFG, "--data.paths", f"[{c.h}]", "--ckpt_path",
                                     str(c.d / "none.ckpt")], "none.ckpt: field 'ckpt_path': checkpoint not found"),
    # ------------------------------------------------------------------ the first-hour audit (issue 27)
    ("score: 'answer' is not a response", lambda c: c.score("--on-error", "fail", inp=c.f("in.jsonl", _jsonl(
        {"id": "a", "prompt": "Q?", "answer": "A"}))), "field 'answer': ambiguous here; a given answer to score goes in 'response'"),
    # refused before the model loads: the model named here does not exist, and the error is about the probe
    ("score: given answers, own-answer probe", lambda c: c.score("--model", str(c.d / "no-such-model"), probe=c.own_art,
     inp=c.f("in.jsonl", _jsonl({"id": "a", "prompt": "Q?", "response": "A"}))), "has no given-answer head"),
    ("score: resume onto an id scored for another prompt", lambda c: c.score(
        output=c.scored_row(), inp=c.f("in.jsonl", _jsonl({"id": "a", "prompt": "Another question?"}))),
     "scores id 'a' for another prompt or response"),
    ("score: resume onto a given answer scored as generated", lambda c: c.score(
        output=c.scored_row(), inp=c.f("in.jsonl", _jsonl({"id": "a", "prompt": "Q?", "response": "Paris"}))),
     "scores id 'a' for another prompt or response"),
    ("eval-given --json onto a user's file", lambda c: ["eval-given", "--probe", c.art, "--model", c.model, "--set",
     "halueval", "--json", c.f("mine.json", '{"mine": 1}')], "mine.json: field 'json': exists and is not a riskprobe"),
    ("compare --out a user's folder", lambda c: ["compare", "--models", c.model, "--out", str(Path(c.f("mine/notes.txt",
     "x")).parent), "--no-progress"], "not a riskprobe comparison's"),
    ("generate --reuse a folder that is no corpus", lambda c: ["generate", "--model", c.model, "--prompts",
     c.f("p.jsonl", _jsonl(GOOD)), "--reuse", c.folder("notcorpus"), "--out", str(c.d / "new"), "--max-new-tokens",
     "3", "--device", "cpu", "--no-progress"], "field 'reuse': is not a riskprobe corpus"),
    ("extract --arm into a user's folder", lambda c: ["extract", "--generations", c.corpus, "--out", str(c.d / "x"),
     "--arm", f"unit={Path(c.f('mine/notes.txt', 'x')).parent}", "--no-progress"], "is not a riskprobe harvest"),
    ("extract a corpus row with text tokens", lambda c: ["extract", "--generations", c.corpus_copy(
        lambda r: r.update(tokens=["a", "b"])), "--out", str(c.d / "x"), "--no-progress"],
     "shard-00000.jsonl.gz:1: not a corpus row: field 'tokens'"),
    ("eval-given --harvest of other features", lambda c: ["eval-given", "--probe", c.art, "--harvest", c.narrow],
     "these signatures do not fit the probe"),
    ("test --ckpt_path of another model", lambda c: ["test", "--config", FIT_CFG, "--data.paths", f"[{c.h}]",
     "--ckpt_path", str(Path(c.art).parent / "final.ckpt")], "was fitted on other inputs"),
    # ------------------------------------------------------------------ report, eval-given, serve
    ("report run missing", lambda c: ["report", "--run", str(c.d / "none"), "--out", str(c.d / "rep")], "none"),
    ("report k negative", lambda c: ["report", "--run", c.h, "--out", str(c.d / "rep"), "--k", "-1"], "field 'k'"),
    ("eval-given limit 0", lambda c: ["eval-given", "--probe", c.art, "--model", c.model, "--set", "halueval", "--limit", "0"],
     "field 'limit'"),
    ("eval-given unknown set", lambda c: ["eval-given", "--set", "nope"], "argument --set: invalid choice"),
    ("serve port out of range", lambda c: ["serve", "--probe", c.art, "--model", c.model, "--port", "70000"], "field 'port'"),
    ("serve max batch 0", lambda c: ["serve", "--probe", c.art, "--model", c.model, "--max-batch", "0"], "field 'max-batch'"),
    ("unknown command", lambda c: ["frobnicate"], "invalid choice: 'frobnicate'"),
]


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_model_dir):
    from riskprobe.harvest.config import HarvestConfig
    from riskprobe.harvest.extract import extract_corpus
    from riskprobe.harvest.run import generate
    from riskprobe.models import load_model

    d = tmp_path_factory.mktemp("assets")
    lm = load_model(str(tiny_model_dir), device="cpu")
    art, _ = make_artifact(lm, d / "art")
    own, _ = make_artifact(lm, d / "own", provenance=("own",))
    prompts = _w(d / "p.jsonl", _jsonl(*({"id": f"q{i}", "question": f"What is {i}?", "answers": [str(i)]}
                                        for i in range(6))))
    corpus = generate(HarvestConfig(model=str(tiny_model_dir), prompts=prompts, out=str(d / "corpus"),
                                    max_new_tokens=4, batch_size=6), lm=lm, progress=False)
    narrow = extract_corpus(corpus, d / "narrow", features={"K": 2, "families": ["commitment"]}, lm=lm, progress=False)
    return tiny_model_dir, art, make_harvest(d / "harvest", n=60), own, corpus, narrow


@pytest.mark.parametrize("name, build, want", CASES, ids=[c[0] for c in CASES])
def test_hostile_input(name, build, want, assets, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    c = Ctx(tmp_path / "work", *assets)
    c.d.mkdir()
    argv = build(c)
    before = _tree(tmp_path)
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert rc == 2, (rc, err)
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert want in err[0], err[0]
    assert _tree(tmp_path) == before  # nothing written, nothing removed, every user file unchanged
    assert not (tmp_path / "PWNED").exists()


# ---------------------------------------------------------------------------------------------- fuzzing
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400))
def test_prompt_reader_fuzz(tmp_path_factory, data):
    from riskprobe.prompts.sets import jsonl_items

    p = tmp_path_factory.mktemp("fz") / "f.jsonl"
    p.write_bytes(data)
    try:
        list(jsonl_items(p))
    except UserError as e:
        assert "f.jsonl" in str(e) and "\n" not in str(e)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.binary(max_size=80),
                          st.dictionaries(st.sampled_from(["id", "prompt", "question", "response", "answer_kind"]),
                                          st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20),
                                                    st.lists(st.integers(), max_size=3)), max_size=5)
                          .map(lambda d: json.dumps(d).encode())), max_size=8))
def test_request_reader_fuzz(tmp_path_factory, lines):
    from riskprobe.serving.jsonl import read_requests

    p = tmp_path_factory.mktemp("fz") / "r.jsonl"
    p.write_bytes(b"\n".join(lines))
    errors: list[str] = []
    try:
        reqs = read_requests(p, "skip", errors)
    except UserError as e:  # only duplicate ids fail a skipping read
        assert "duplicate id" in str(e)
        return
    ids = [r["id"] for r in reqs]
    assert len(ids) == len(set(ids)) and all(isinstance(i, str) for i in ids)
    for r in reqs:
        assert isinstance(r.get("prompt", r.get("question")), str) and r.get("prompt", r.get("question")).strip()
