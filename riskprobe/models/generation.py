"""Batched generation: left padding, greedy or seeded sampling, stop strings, per-row EOS.

:func:`generate` wraps ``model.generate`` and returns, for each row, the answer text cut at the first
stop string, the generated token ids, and how many of them belong to the answer (``n_tokens``, counting
the token that ended it). Anything that wants to watch the generation (signature capture, live
monitoring) passes ``stopping_criteria`` or registers hooks around this call. Two things keep the model from
computing what nobody reads: a prompt prefix that the batch shares is computed once (:func:`encode`), and on a
CPU a row that has ended leaves the batch at that step (hooks that keep per-row state register in
``LoadedModel.watchers`` and are told which rows go on; see :func:`compacts_by_default`).
"""

from __future__ import annotations

import copy
import hashlib
import inspect
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import DynamicCache, LogitsProcessorList, StoppingCriteriaList, StopStringCriteria

from .loader import LoadedModel
from .prompting import RenderedPrompt


@dataclass
class Generation:
    """One generated answer.

    Attributes:
        text: the decoded answer, stripped, cut before the first stop string.
        token_ids: the answer's token ids, up to and including the token that ended it.
        finish: ``eos``, ``stop`` (a stop string) or ``length``.
    """

    text: str
    token_ids: list[int]
    finish: str

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


_STOP_CACHE: dict[tuple[int, tuple[str, ...]], object] = {}


def _stop_criteria(tokenizer, stops: tuple[str, ...]):
    key = (id(tokenizer), stops)
    if key not in _STOP_CACHE:
        _STOP_CACHE[key] = StopStringCriteria(tokenizer=tokenizer, stop_strings=list(stops))
    return _STOP_CACHE[key]


def eos_ids(lm: LoadedModel) -> set[int]:
    """Token ids that end a row: the tokenizer's EOS and the generation config's EOS ids."""
    ids = set()
    gc_eos = getattr(lm.model.generation_config, "eos_token_id", None)
    for v in (lm.tokenizer.eos_token_id, gc_eos):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    return ids


def tokenize(lm: LoadedModel, prompts: Sequence[RenderedPrompt]) -> dict[str, torch.Tensor]:
    """Left-padded input ids and attention mask for a batch of rendered prompts of one style."""
    flags = {p.add_special_tokens for p in prompts}
    if len(flags) != 1:
        raise ValueError("a batch must not mix chat and few-shot prompts")
    enc = lm.tokenizer([p.text for p in prompts], return_tensors="pt", padding=True,
                       add_special_tokens=flags.pop())
    return {k: v.to(lm.device) for k, v in enc.items()}


#: the fewest tokens a batch's prompts must share before their keys and values are computed once (see :func:`encode`)
MIN_SHARED_PREFIX = 4
_PREFIX_CACHE_SIZE = 8


def _forward_params(model) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def _window(model) -> int | None:
    """The sliding attention window (in cache slots), where the model has one."""
    cfg = getattr(model.config, "text_config", None) or model.config
    w = getattr(cfg, "sliding_window", None)
    return int(w) if isinstance(w, int) and getattr(cfg, "use_sliding_window", True) is not False else None


def shared_prefix(lm: LoadedModel, rows: Sequence[Sequence[int]], extra: int | None) -> int:
    """How many leading tokens every row of ``rows`` (unpadded prompt ids) shares and may compute once: at
    least :data:`MIN_SHARED_PREFIX`, leaving each row one token of its own, else 0. A model with a sliding
    attention window shares only when the longest row plus ``extra`` more tokens (``None``: unknown) stays
    inside the window: padding after the prefix would otherwise push early tokens out of it. The model must take
    position ids (``generate`` derives them from the attention mask, so padding in the middle keeps every
    token's position) and a cache."""
    params = _forward_params(lm.model)
    if len(rows) < 2 or "position_ids" not in params or not ({"cache", "past_key_values"} & params):
        return 0
    n, limit = 0, min(len(r) for r in rows) - 1
    while n < limit and all(r[n] == rows[0][n] for r in rows):
        n += 1
    window = _window(lm.model)
    if window is not None and (extra is None or max(len(r) for r in rows) + extra >= window):
        return 0
    return n if n >= MIN_SHARED_PREFIX else 0


def prefix_cache(lm: LoadedModel, prefix: Sequence[int], batch: int) -> dict:
    """``{cache keyword: cache}`` holding ``prefix``'s keys and values for ``batch`` rows.

    The prefix (batch 1) is computed once per model and prefix and kept (:attr:`LoadedModel.prefix_cache`, a
    small LRU); callers get a copy. It runs through the decoder without the output head, so hooks that count
    steps at the head (signature capture) do not see it, and the states it leaves at the layers' hooks are
    overwritten by the batch's own pass."""
    key, cache = tuple(prefix), lm.prefix_cache
    if key in cache:
        cache[key] = cache.pop(key)  # most recent last
    else:
        base = lm.model.get_decoder() if hasattr(lm.model, "get_decoder") else lm.model.base_model
        ids = torch.tensor([key], device=lm.device)
        with torch.inference_mode():
            out = base(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
        cache[key] = getattr(out, "cache", None) or out.past_key_values
        while len(cache) > _PREFIX_CACHE_SIZE:
            cache.pop(next(iter(cache)))
    kv = copy.deepcopy(cache[key])
    kv.batch_repeat_interleave(batch)
    return {"cache" if "cache" in _forward_params(lm.model) else "past_key_values": kv}


def encode(lm: LoadedModel, prompts: Sequence[RenderedPrompt], *, share_prefix: bool = True,
           max_new_tokens: int | None = None) -> dict:
    """Model inputs for ``generate``: ``input_ids``, ``attention_mask`` and, where the batch's prompts begin
    with the same tokens (:func:`shared_prefix`), a cache holding them.

    Prompts rendered with a chat template share their system message (about half of a short question's prompt
    on SmolLM2). That prefix's keys and values are computed once per model (:func:`prefix_cache`) and the rows
    are laid out as ``[prefix][padding][rest of the prompt]`` with the padding masked: every token keeps the
    position it has in its own unpadded prompt, so the answers are those of :func:`tokenize`'s left-padded batch
    (up to floating-point rounding) while the prefill computes only the rest. Otherwise, or with
    ``share_prefix=False``, this is :func:`tokenize`.
    """
    if not share_prefix or len(prompts) < 2:
        return tokenize(lm, prompts)
    flags = {p.add_special_tokens for p in prompts}
    if len(flags) != 1:
        raise ValueError("a batch must not mix chat and few-shot prompts")
    ids = lm.tokenizer([p.text for p in prompts], add_special_tokens=flags.pop())["input_ids"]
    n = shared_prefix(lm, ids, max_new_tokens)
    if not n:
        return tokenize(lm, prompts)
    rest = [x[n:] for x in ids]
    width, pad = max(map(len, rest)), lm.tokenizer.pad_token_id
    dev = lm.device
    return {"input_ids": torch.tensor([ids[0][:n] + [pad] * (width - len(r)) + r for r in rest], device=dev),
            "attention_mask": torch.tensor([[1] * n + [0] * (width - len(r)) + [1] * len(r) for r in rest], device=dev),
            **prefix_cache(lm, ids[0][:n], len(prompts))}


def batch_order(kinds: Sequence[str], lengths: Sequence[int]) -> list[int]:
    """Positions in the order to batch them: by answer kind (one system message per batch, so :func:`encode`
    computes its tokens once), then by length (little padding); ties keep their order.

    >>> batch_order(["number", "alias", "alias", "number"], [5, 9, 3, 5])
    [2, 1, 0, 3]
    """
    return sorted(range(len(kinds)), key=lambda i: (kinds[i], lengths[i], i))


def finish_rows(lm: LoadedModel, new_ids: torch.Tensor, stops: tuple[str, ...]) -> list[Generation]:
    """Cut each row of generated ids at its end (EOS or stop string) and decode it."""
    tok = lm.tokenizer
    ends = eos_ids(lm)
    out = []
    for row in new_ids.tolist():
        ids, finish = [], "length"
        text_so_far = ""
        for t in row:
            ids.append(t)
            if t in ends:
                finish = "eos"
                break
            text_so_far = tok.decode(ids, skip_special_tokens=True)
            if stops and any(s in text_so_far.lstrip() for s in stops):
                finish = "stop"
                break
        text = tok.decode(ids, skip_special_tokens=True).lstrip()
        for s in stops:
            if s in text:
                text = text[: text.index(s)]
        out.append(Generation(text.strip(), ids, finish))
    return out


class ForceTokens:
    """A logits processor that makes row ``i`` emit ``forced[i]`` and then EOS (teacher forcing).

    The model still computes its own logits at every step (which is what signatures read); only the
    choice of the next token is forced, so a forced answer goes through exactly the computation of a
    generated one.
    """

    def __init__(self, forced: list[list[int]], prompt_len: int, eos: int):
        self.forced, self.prompt_len, self.eos = forced, prompt_len, eos

    def __call__(self, input_ids, scores):
        t = input_ids.shape[1] - self.prompt_len
        want = torch.tensor([f[t] if t < len(f) else self.eos for f in self.forced], device=scores.device)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, want.view(-1, 1), 0.0)
        return out


class RowSampler:
    """A logits processor that samples each row's next token with that row's own seeded generator
    (temperature, then nucleus ``top_p``) and forces it, so that a row's sample depends only on its seed and
    its own tokens, never on which other rows share its batch or on torch's global random state."""

    def __init__(self, seeds: Sequence[int], temperature: float = 1.0, top_p: float = 1.0):
        self.gens = [torch.Generator().manual_seed(int(s) % (1 << 63)) for s in seeds]
        self.temperature, self.top_p = float(temperature), float(top_p)

    def __call__(self, input_ids, scores):
        probs = torch.softmax(scores.float() / self.temperature, dim=-1).cpu()
        if self.top_p < 1.0:
            p, idx = probs.sort(dim=-1, descending=True)
            drop = (p.cumsum(-1) - p) > self.top_p  # keep the smallest prefix whose mass reaches top_p
            p = p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, idx, p)
        chosen = torch.stack([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.gens)])
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, chosen.to(scores.device).view(-1, 1), 0.0)
        return out

    def select_rows(self, keep: Sequence[int]) -> None:
        """Only the rows at positions ``keep`` go on (the others ended): their generators, in that order."""
        self.gens = [self.gens[i] for i in keep]


def sample_seed(seed: int, item_id: str, sample: int) -> int:
    """The seed of one sampled answer: a hash of the run's seed, the question's id and the sample index."""
    return int(hashlib.sha256(f"{seed}:{item_id}:{sample}".encode()).hexdigest()[:15], 16)


def response_ids(lm: LoadedModel, responses: Sequence[str]) -> list[list[int]]:
    """Token ids of given answers as the model would emit them after its prompt (no special tokens)."""
    return [lm.tokenizer(r.strip(), add_special_tokens=False)["input_ids"] for r in responses]


def forced_ids(lm: LoadedModel, responses: Sequence[str]) -> list[list[int]]:
    """What a given answer is teacher forced as: its tokens (:func:`response_ids`) followed by EOS, the
    step that ends it. Scoring, the given-answer harvest and its evaluation all force exactly this."""
    eos = min(eos_ids(lm))
    return [ids + [eos] for ids in response_ids(lm, responses)]


@torch.inference_mode()
def generate(lm: LoadedModel, prompts: Sequence[RenderedPrompt], *, max_new_tokens: int = 32,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
             stopping_criteria: list | None = None, forced: list[list[int]] | None = None,
             row_seeds: Sequence[int] | None = None, share_prefix: bool = True,
             compact: bool | None = None) -> list[Generation]:
    """Generate answers for a batch of rendered prompts (greedy unless ``do_sample``).

    A leading stop string (e.g. the newline a model may emit before its answer) does not end a row;
    rows end at their own EOS, at a stop string after some answer text, or at ``max_new_tokens``.
    With ``forced`` (token ids per row), each row emits exactly those tokens and then EOS (teacher
    forcing; stop strings are not applied). With ``do_sample`` and ``row_seeds``, row ``i`` is sampled from
    its own generator seeded ``row_seeds[i]`` (see :class:`RowSampler`): reproducible whatever the batch.
    A prompt prefix the batch shares is computed once (:func:`encode`; ``share_prefix=False`` turns it off).

    Rows that end leave the batch (``compact``): a decode loop calls the model one token at a time and drops a row
    from the inputs and the key/value cache at the step it ends, so the model computes exactly the row-steps the
    answers need (with ``model.generate`` about a third of a batch's row-steps belonged to rows that had ended, on
    two CPU cores). The answers are those of one uninterrupted ``generate`` (tests check it on five architectures
    and on SmolLM2). It
    applies to greedy and row-seeded sampling; not to teacher forcing, to sampling from torch's global
    generator, or when the caller passes ``stopping_criteria`` (which may expect the batch to keep its
    rows). Signature captures attached to the model (:attr:`LoadedModel.watchers`) are told which rows go on.
    ``compact=None`` (the default) compacts where it pays (:func:`compacts_by_default`): on a CPU, not on a
    CUDA GPU.
    """
    longest = max(len(f) for f in forced) + 1 if forced else max_new_tokens
    enc = encode(lm, prompts, share_prefix=share_prefix, max_new_tokens=longest)
    stops = () if forced else tuple(dict.fromkeys(s for p in prompts for s in p.stop_strings))
    criteria = list(stopping_criteria or [])
    if stops:
        criteria.append(_LeadingSafeStop(_stop_criteria(lm.tokenizer, stops), enc["input_ids"].shape[1],
                                         lm.tokenizer, stops))
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=lm.tokenizer.pad_token_id)
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        if seed is not None:
            torch.manual_seed(seed)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)

    sampler = None
    if do_sample and row_seeds is not None:
        if len(row_seeds) != len(prompts):
            raise ValueError("row_seeds needs one seed per prompt")
        sampler = RowSampler(row_seeds, temperature, top_p)
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None,
                      logits_processor=LogitsProcessorList([sampler]))
    if forced:
        eos = min(eos_ids(lm))
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None,
                      max_new_tokens=max(len(f) for f in forced) + 1,
                      logits_processor=LogitsProcessorList([ForceTokens(forced, enc["input_ids"].shape[1], eos)]))
    criteria = StoppingCriteriaList(criteria)
    if compact is None:
        compact = compacts_by_default(lm.device)
    if compact and not forced and not stopping_criteria and (not do_sample or sampler is not None):
        return _generate_stepwise(lm, enc, kwargs, criteria, stops, max_new_tokens, sampler)
    seqs = lm.model.generate(**enc, **kwargs, stopping_criteria=criteria)
    return finish_rows(lm, seqs[:, enc["input_ids"].shape[1]:], stops)


def compacts_by_default(device) -> bool:
    """Whether rows that ended leave the batch unless told otherwise: not on a CUDA GPU, where a step's time
    hardly depends on the row count (an H100 at batch 512, with an earlier loop that restarted ``model.generate``
    every four tokens: 1.51 s with compaction against 1.18 s without, 2.76 against 2.07 in a second round,
    ``benchmarks/results/2026-11-26/h100_generate_profile.txt``; the step loop is not measured on a GPU); on a CPU a
    third of a batch's row-steps belonged to ended rows and dropping them pays.

    >>> compacts_by_default("cpu"), compacts_by_default("cuda:0")
    (True, False)
    """
    return torch.device(device).type != "cuda"


def _generate_stepwise(lm: LoadedModel, enc: dict, kwargs: dict, criteria, stops: tuple[str, ...],
                       max_new_tokens: int, sampler: RowSampler | None) -> list[Generation]:
    """:func:`generate`'s decode loop, one token at a time, the model called directly: a row leaves the batch and the
    cache at the step it ends. The inputs of each call are those
    ``model.generate`` builds (positions from the attention mask, the cache position, the last position's logits
    only, in float32), so greedy and row-seeded answers are the same (a test checks it)."""
    model, ids, att = lm.model, enc["input_ids"], enc["attention_mask"]
    params = _forward_params(model)
    key = next((k for k in ("cache", "past_key_values") if k in enc), None)
    cache = enc.get(key) if key else None
    key = key or ("cache" if "cache" in params else "past_key_values")
    if cache is None:
        cache = DynamicCache(config=model.config)
    past, P = cache.get_seq_length(), ids.shape[1]
    processors = kwargs.get("logits_processor") or []
    ends = torch.tensor(sorted(eos_ids(lm)), device=ids.device)
    alive = list(range(ids.shape[0]))
    done: list[Generation | None] = [None] * len(alive)
    seqs, step_ids = ids, ids[:, past:]
    for made in range(1, max_new_tokens + 1):
        inputs = {"input_ids": step_ids, "attention_mask": att, key: cache, "use_cache": True}
        if "position_ids" in params:
            inputs["position_ids"] = (att.long().cumsum(-1) - 1).masked_fill(att == 0, 1)[:, -step_ids.shape[1]:]
        if "cache_position" in params:
            inputs["cache_position"] = torch.arange(seqs.shape[1] - step_ids.shape[1], seqs.shape[1],
                                                    device=ids.device)
        if "logits_to_keep" in params:
            inputs["logits_to_keep"] = 1
        out = model(**inputs)
        scores = out.logits[:, -1, :].to(dtype=torch.float32, copy=True)
        for proc in processors:
            scores = proc(seqs, scores)
        nxt = scores.argmax(-1)
        seqs = torch.cat([seqs, nxt[:, None]], 1)
        att = torch.cat([att, att.new_ones((att.shape[0], 1))], 1)
        cache = getattr(out, "cache", None) or out.past_key_values
        if made == max_new_tokens:
            break
        hit = torch.isin(nxt, ends)
        if criteria:
            hit |= criteria(seqs, scores)
        if not bool(hit.any()):
            step_ids = nxt[:, None]
            continue
        maybe = torch.nonzero(hit).flatten().tolist()
        ended = {j: g for j, g in zip(maybe, finish_rows(lm, seqs[maybe, P:], stops)) if g.finish != "length"}
        for j, g in ended.items():
            done[alive[j]] = g
        keep = [j for j in range(len(alive)) if j not in ended]
        if not keep:
            return done
        if len(keep) < len(alive):
            idx = torch.tensor(keep, device=seqs.device)
            for w in lm.watchers:
                w.select_rows(idx, seqs[:, -1])
            if sampler is not None:
                sampler.select_rows(keep)
            cache.batch_select_indices(idx)
            seqs, att, nxt = seqs[idx], att[idx], nxt[idx]
            alive = [alive[j] for j in keep]
        step_ids = nxt[:, None]
    for j, g in enumerate(finish_rows(lm, seqs[:, P:], stops)):
        done[alive[j]] = g
    return done


class _LeadingSafeStop:
    """A stop-string criterion that ignores stop strings before any answer text (leading newlines)."""

    def __init__(self, inner, prompt_len: int, tokenizer, stops: tuple[str, ...]):
        self.inner, self.prompt_len, self.tok, self.stops = inner, prompt_len, tokenizer, stops

    def __call__(self, input_ids, scores, **kwargs):
        hit = self.inner(input_ids, scores, **kwargs)
        if not bool(hit.any()):
            return hit
        for i in torch.nonzero(hit).flatten().tolist():
            text = self.tok.decode(input_ids[i, self.prompt_len:], skip_special_tokens=True)
            if not any(s in text.lstrip() for s in self.stops):
                hit[i] = False
        return hit
