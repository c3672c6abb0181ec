"""DiffSynth's two model flags (``ModelConfig``, ``parse_model_configs``) and the fetch
that turns each entry into files.

``--model_paths`` is a JSON list whose items are a path or a list of shard paths; ``--model_id_with_origin_paths``
is a comma list of ``model_id:glob`` split on the last ``:``. Both may be given; each entry is one model.
"""
from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DiffSynthError
from ..files import project_root
from ..progress import mode as progress_mode, progress


# Tiny presets are written under this model-id namespace, so they can never be mistaken for real weights.
TINY_MODEL_NAMESPACE = "diffsynth-tiny"


class ModelConfigError(DiffSynthError, ValueError):
    """A model flag or file that cannot be used; the message names it and says what to do."""


@dataclass
class ModelConfig:
    """One model: local ``path`` (file or shard list), or ``model_id`` + ``origin_file_pattern`` on ModelScope.

    ``folder``: the entry names a folder used as such (a tokenizer or processor), not a model's weights."""

    path: str | list[str] | None = None
    model_id: str | None = None
    origin_file_pattern: str | None = None
    source_string: str = ""  # the flag entry as the user wrote it (fp8_models etc. match on it)
    folder: bool = False

    def files(self) -> list[str]:
        if self.path is None:
            raise ModelConfigError(f"{self.source_string}: not fetched yet")
        return [self.path] if isinstance(self.path, str) else list(self.path)

    def weight_files(self) -> list[str]:
        """:meth:`files` with a folder (DiffSynth's ``model_id:text_encoder_2/``) as its weight files."""
        out = []
        for path in self.files():
            out += folder_weight_files(path, self.source_string) if os.path.isdir(path) else [path]
        return out


PICKLED = (".bin", ".pth", ".pt", ".ckpt")
SHARD = re.compile(r"^(?P<stem>.+)-\d{5}-of-\d{5}\.safetensors$")
INDEX_SUFFIX = ".safetensors.index.json"


def _stem(name: str) -> str:
    """The weight set a file belongs to: ``model`` for model.safetensors, its shards and its index."""
    if name.endswith(INDEX_SUFFIX):
        return name[: -len(INDEX_SUFFIX)]
    shard = SHARD.match(name)
    return shard["stem"] if shard else name[: -len(".safetensors")]


def folder_weight_files(folder: str | os.PathLike, source: str = "") -> list[str]:
    """The weight files of a model folder, as DiffSynth loads a folder entry (a Hugging Face model folder read with
    its config.json): its safetensors set, a sharded set complete as its index lists it.

    A folder holding several sets (e.g. ``diffusion_pytorch_model.safetensors`` and a ``.fp16`` variant) loads
    the one without a variant suffix, as ``from_pretrained`` does; otherwise the entry must name one."""
    folder = str(folder)
    names = sorted(os.listdir(folder))
    weights = [n for n in names if n.endswith(".safetensors") and os.path.isfile(os.path.join(folder, n))]
    where = f"{source}: the folder {folder}" if source else f"The folder {folder}"
    if not weights:
        pickled = [n for n in names if n.endswith(PICKLED)]
        raise ModelConfigError(
            f"{where} holds no .safetensors weights"
            + (f", only pickled files ({', '.join(pickled[:3])}), which are refused for safety: convert them to "
               "safetensors" if pickled else ": check the pattern against the repository's file list"))
    sets: dict[str, list[str]] = {}
    for name in weights:
        sets.setdefault(_stem(name), []).append(name)
    if len(sets) > 1:
        plain = [stem for stem in sets if "." not in stem]  # `model`, not `model.fp16`
        if len(plain) != 1:
            raise ModelConfigError(
                f"{where} holds several weight sets ({', '.join(sorted(sets))}); name one in the entry's pattern, "
                f"e.g. <model_id>:{os.path.basename(folder.rstrip(os.sep))}/{min(sets)}*.safetensors")
        sets = {plain[0]: sets[plain[0]]}
    (stem, chosen), = sets.items()
    index = os.path.join(folder, stem + INDEX_SUFFIX)
    if os.path.isfile(index):
        with open(index) as f:
            listed = set(json.load(f).get("weight_map", {}).values())
        lacking = sorted(listed - set(chosen))
        if lacking:
            raise ModelConfigError(f"{where}: {os.path.basename(index)} lists {len(lacking)} shard(s) that are not "
                                   f"there ({', '.join(lacking[:3])}): the download is incomplete; fetch it again")
    return [os.path.join(folder, n) for n in chosen]


def model_base_path() -> Path:
    """``$DIFFSYNTH_MODEL_BASE_PATH``, else ``<project root>/models`` (DiffSynth: ``./models``).

    Anchored at the project root so DVC experiments in ``.dvc/tmp/exps`` share one download folder.
    """
    env = os.environ.get("DIFFSYNTH_MODEL_BASE_PATH")
    return Path(env) if env else project_root() / "models"


def skip_download() -> bool:
    return os.environ.get("DIFFSYNTH_SKIP_DOWNLOAD", "false").strip().lower() == "true"


def parse_model_paths(text: str | None) -> list[ModelConfig]:
    if not text:
        return []
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        snippet = text[max(0, e.pos - 30): e.pos + 10]
        raise ModelConfigError(
            f"--model_paths is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}, character {e.pos}, "
            f"near {snippet!r}). "
            "A common cause is a stray comma after the last item of a list (DiffSynth's own warning: "
            "no extra ',' in the JSON)." ) from None
    if isinstance(items, str):
        items = [items]
    if not isinstance(items, list):
        raise ModelConfigError("--model_paths must be a JSON list of paths (or of lists of shard paths)")
    configs = []
    for i, item in enumerate(items):
        if isinstance(item, str) or (isinstance(item, list) and item and all(isinstance(p, str) for p in item)):
            configs.append(ModelConfig(path=item, source_string=item if isinstance(item, str) else json.dumps(item)))
        else:
            raise ModelConfigError(f"--model_paths item {i} is {item!r}: expected a path or a list of shard paths")
    return configs


REDIRECTED_FILES: dict[str, str] = {}  # pickled file name -> converted repository (registered by families)


def register_redirects(redirects) -> None:
    """Add a family's ``(file, converted repository)`` pairs (called by the family registry)."""
    REDIRECTED_FILES.update(dict(redirects))


def redirect_common_file(model_id: str, pattern: str) -> tuple[str, str]:
    """DiffSynth's ``redirect_common_files``: pickled .pth files it knows are fetched as safetensors from its
    converted repository (declared by the family), e.g. ``<id>:X_VAE.pth`` -> ``<converted>:X_VAE.safetensors``.
    Unlike DiffSynth, a known file in a folder is redirected too (Wan2.2-Animate-2's ``videomodel/Wan-AI/
    models_t5_umt5-xxl-enc-bf16.pth``, the same encoder, which DiffSynth loads as a pickle and this loader refuses)."""
    name = pattern.rsplit("/", 1)[-1]
    if name in REDIRECTED_FILES:
        # tiny presets carry the converted files themselves, under their own model id and folder
        if model_id.split("/")[0] == TINY_MODEL_NAMESPACE:
            return model_id, pattern[: -len(".pth")] + ".safetensors"
        return REDIRECTED_FILES[name], name[: -len(".pth")] + ".safetensors"
    return model_id, pattern


def parse_model_id_with_origin_paths(text: str | None, redirect_common_files: bool = True) -> list[ModelConfig]:
    configs = []
    for entry in (text or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        if ":" not in entry:
            raise ModelConfigError(f"--model_id_with_origin_paths entry {entry!r} has no ':'; "
                                   "write model_id:file_pattern, e.g. Qwen/Qwen-Image:vae/*.safetensors")
        model_id, pattern = entry.rsplit(":", 1)
        if not model_id or not pattern:
            raise ModelConfigError(f"--model_id_with_origin_paths entry {entry!r}: both the model id and the file "
                                   "pattern must be non-empty (model_id:file_pattern)")
        if redirect_common_files:
            model_id, pattern = redirect_common_file(model_id, pattern)
        configs.append(ModelConfig(model_id=model_id, origin_file_pattern=pattern, source_string=entry))
    return configs


def parse_model_configs(model_paths: str | None, model_id_with_origin_paths: str | None) -> list[ModelConfig]:
    configs = parse_model_paths(model_paths) + parse_model_id_with_origin_paths(model_id_with_origin_paths)
    if not configs:
        raise ModelConfigError("No models given: set model.model_paths and/or model.model_id_with_origin_paths")
    return configs


def parse_path_or_model_id(value: str | None, default: str) -> ModelConfig:
    """Tokenizer/processor flags: an existing local path, else ``model_id:folder/``."""
    value = value or default
    if os.path.exists(value):
        return ModelConfig(path=value, source_string=value, folder=True)
    if ":" not in value:
        raise ModelConfigError(f"{value!r} is neither an existing path nor model_id:path")
    model_id, pattern = value.rsplit(":", 1)
    return ModelConfig(model_id=model_id, origin_file_pattern=pattern, source_string=value, folder=True)


def _normalise_pattern(pattern: str | None) -> str:
    if pattern in (None, "", "./"):
        return "*"
    return pattern + "*" if pattern.endswith("/") else pattern


def hub_endpoint() -> str:
    return os.environ.get("MODELSCOPE_ENDPOINT", "https://www.modelscope.cn")


def hub_reachable(endpoint: str | None = None, timeout: float = 3.0) -> bool:
    """A quick TCP connect to the hub, so that offline runs fail in seconds, not after 22 s of retries."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint or hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


class HubUnreachable(DiffSynthError, ConnectionError):
    pass


def download(model_id: str, local_dir: Path, allow_patterns: list[str], ignore_patterns: list[str]) -> None:
    """Fetch files from ModelScope (the network boundary; tests replace it)."""
    if not hub_reachable():
        raise HubUnreachable(f"{hub_endpoint()} is not reachable")
    from modelscope import snapshot_download

    print(f"[download] {model_id}: {', '.join(allow_patterns)} -> {local_dir}", flush=True)
    snapshot_download(model_id, local_dir=str(local_dir), allow_file_pattern=allow_patterns,
                      ignore_file_pattern=ignore_patterns or None, progress_callbacks=[file_progress_callback()])


def file_progress_callback():
    """A modelscope ProgressCallback class showing each file's download as our progress lines.

    Only where the output is a log: on a terminal modelscope draws its own bars (tqdm), and two bars of one
    file would fight over the line.
    """
    from modelscope.hub.callback import ProgressCallback

    class FileProgress(ProgressCallback):
        def __init__(self, filename: str, file_size: int):
            super().__init__(filename, file_size)
            self.bar = progress(total=file_size or None, desc=f"download {filename}", unit="B",
                                enabled=progress_mode() == "lines")

        def update(self, size: int) -> None:
            self.bar.update(size)

        def end(self) -> None:
            self.bar.close()

    return FileProgress


def _model_files(paths: list[str], config: ModelConfig) -> list[str]:
    """A model entry's files, each folder among them as its weight files (a tokenizer/processor folder stays)."""
    if config.folder:
        return paths
    return [f for p in paths for f in (folder_weight_files(p, config.source_string) if os.path.isdir(p) else [p])]


def _as_path(files: list[str]) -> str | list[str]:
    return files[0] if len(files) == 1 else files


def fetch(config: ModelConfig, base_path: Path | None = None, skip: bool | None = None) -> ModelConfig:
    """Resolve ``config`` to local files, downloading missing ones unless skipping.

    A model entry that names a folder (``model_id:text_encoder_2/``, or a folder in ``--model_paths``) resolves to
    the folder's weight files, as DiffSynth loads such a folder as one model; a tokenizer/processor entry
    (``config.folder``) resolves to the folder itself."""
    if config.path is not None:
        files = []
        for p in config.files():
            if glob.has_magic(p) and not os.path.exists(p):
                matched = sorted(glob.glob(p))
                if not matched:
                    raise ModelConfigError(f"No files match the pattern {p} (from {config.source_string!r})")
                files += matched
            elif not os.path.exists(p):
                raise ModelConfigError(f"Model file {p} (from {config.source_string!r}) does not exist; check the "
                                       "path, or give model_id:pattern in model_id_with_origin_paths to download it")
            else:
                files.append(p)
        files = _model_files(files, config)
        if isinstance(config.path, list) or files != config.files():
            config.path = _as_path(files)
        return config
    base_path = Path(base_path) if base_path is not None else model_base_path()
    skip = skip_download() if skip is None else skip
    skip = skip or config.model_id.split("/")[0] == TINY_MODEL_NAMESPACE  # tiny presets exist on no hub
    local_dir = base_path / config.model_id
    pattern = _normalise_pattern(config.origin_file_pattern)
    # a model folder: only its safetensors (+ the config.json and shard index below); pickles would be refused
    origin, model_folder = config.origin_file_pattern, None
    if not config.folder and (origin in (None, "", "./") or origin.endswith("/")):
        model_folder = "" if origin in (None, "", "./") else origin  # "" = the repository's root folder
        pattern = model_folder + "*.safetensors"
    present = sorted(glob.glob(str(local_dir / pattern)))
    if not skip:
        folder = os.path.dirname(pattern)
        # also bring the folder's config.json and shard index, which loading needs
        allow = [pattern] + ([f"{folder}/*.json"] if folder else ["*.json"])
        ignore = [os.path.relpath(p, local_dir) for p in present]
        ignore += [os.path.relpath(p, local_dir) for a in allow[1:] for p in sorted(glob.glob(str(local_dir / a)))]
        try:
            download(config.model_id, local_dir, allow, ignore)
        except OSError as e:  # modelscope's NetworkError is an OSError too
            if not present:
                raise ModelConfigError(
                    f"Could not download {config.model_id}:{pattern} into {local_dir} ({type(e).__name__}: {e}). "
                    "Offline? Put the files there yourself and set DIFFSYNTH_SKIP_DOWNLOAD=true, or point "
                    "model.model_paths at local files.") from None
        present = sorted(glob.glob(str(local_dir / pattern)))
    if model_folder is not None and (local_dir / model_folder).is_dir():
        config.path = _as_path(folder_weight_files(local_dir / model_folder, config.source_string))
        return config
    if not present:
        raise ModelConfigError(f"No files match {pattern!r} in {local_dir} (entry {config.source_string!r}); "
                               + ("DIFFSYNTH_SKIP_DOWNLOAD is set, so nothing was downloaded." if skip else
                                  "check the pattern against the model repository's file list."))
    if config.folder and (config.origin_file_pattern or "").endswith("/"):
        config.path = str(local_dir / config.origin_file_pattern.rstrip("/"))  # a tokenizer or processor folder
    else:
        config.path = _as_path(_model_files(present, config))
    return config
