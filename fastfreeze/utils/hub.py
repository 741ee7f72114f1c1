"""The Hugging Face Hub: `hf-hub:org/name[@revision]` names, the timm architecture behind a Hub model, an
export's files downloaded into (or read from) the Hub cache, the model card, and the upload (docs/export.md).

Everything goes through `huggingface_hub` (a dependency of timm): downloads land in its cache
(`HF_HUB_CACHE`, default `~/.cache/huggingface/hub`) and `HF_HUB_OFFLINE=1` reads that cache without the
network. Uploads need a token (`huggingface-cli login`, `HF_TOKEN`, or `token=`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

HUB_PREFIXES = ("hf-hub:", "hf_hub:")  # timm's spellings


def hub_repo_id(name: Any) -> Optional[str]:
    """`'org/name'` (with any `@revision`) for a Hub name `'hf-hub:org/name'`; None for anything else."""
    if not isinstance(name, str):
        return None
    for prefix in HUB_PREFIXES:
        if name.startswith(prefix):
            repo = name[len(prefix):]
            if repo.count("/") != 1 or not all(repo.split("@")[0].split("/")):
                raise ValueError(f"{name!r} is not a Hub model name: write 'hf-hub:<owner>/<model>' (optionally "
                                 "followed by @<revision>)")
            return repo
    return None


def split_revision(repo: str) -> tuple[str, Optional[str]]:
    """`'org/name@rev'` -> `('org/name', 'rev')`; no `@`: revision None (the default branch)."""
    repo_id, _, revision = repo.partition("@")
    return repo_id, revision or None


def timm_model_config(name: str) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """`(pretrained_cfg, architecture, model_args)` of the timm model a Hub name stands for, read from its
    `config.json` (downloaded, or read from the cache) by timm's own loader."""
    from timm.models import load_model_config_from_hf
    repo = hub_repo_id(name)
    if repo is None:
        raise ValueError(f"{name!r} is not a Hub name ('hf-hub:<owner>/<model>')")
    pretrained_cfg, arch, model_args = load_model_config_from_hf(repo)
    return dict(pretrained_cfg), arch, dict(model_args)


def download_files(name: str, filenames: list[str]) -> Path:
    """The folder holding `filenames` of the Hub repository `name` ('hf-hub:org/name[@rev]'), downloaded into
    the Hub cache (or found there, e.g. with `HF_HUB_OFFLINE=1`)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    repo_id, revision = split_revision(hub_repo_id(name) or "")
    folders = set()
    for filename in filenames:
        try:
            path = hf_hub_download(repo_id, filename, revision=revision, library_name="fastfreeze")
        except LocalEntryNotFoundError as e:
            raise FileNotFoundError(
                f"{filename} of {name} is not in the Hub cache and cannot be downloaded ({e}). Check the network, or "
                "unset HF_HUB_OFFLINE; the cache is HF_HUB_CACHE (default ~/.cache/huggingface/hub)") from e
        except (EntryNotFoundError, RepositoryNotFoundError) as e:
            raise FileNotFoundError(f"{name} has no {filename}: is it a fastfreeze export (pushed with "
                                    f"learn.push_to_hub), and is the name right? ({type(e).__name__})") from e
        folders.add(Path(path).parent)
    if len(folders) != 1:
        raise FileNotFoundError(f"the files of {name} came from different revisions: {sorted(map(str, folders))}")
    return folders.pop()


def model_card(repo_id: str, config: dict[str, Any], groups: list[dict[str, Any]],
               history: list[dict[str, Any]]) -> str:
    """The README.md of a pushed export: the architecture, layer groups, preprocessing, classes and the
    per-epoch history (losses and metrics), with how to load it."""
    body = config["model"].get("body", {})
    arch = body.get("arch") or body.get("factory") or config["model"].get("factory", "a custom model")
    vocab = config["vocab"]
    lines = ["---", "library_name: fastfreeze", "pipeline_tag: image-classification",
             "tags:", "- fastfreeze", "- timm", "- image-classification", "---", "",
             f"# {repo_id.split('/')[-1]}", "",
             f"A fine-tuned `{arch}` exported by fastfreeze {config['fastfreeze_version']}: "
             f"{config['n_out']} outputs" + (f", classes {', '.join(vocab)}." if vocab else "."), "",
             "## Use", "", "```python", "from fastfreeze import load_learner",
             f"predictor = load_learner('hf-hub:{repo_id}')",
             "label, index, probabilities = predictor.predict('image.jpg')", "```", "",
             "## Model", "", "```json", json.dumps(config["model"], indent=1), "```", "",
             "Layer groups (the last one is the head):", "",
             "| group | modules | parameters |", "|---|---|---|"]
    lines += [f"| {g['group']} | {g['modules']} | {g['params']:,} |" for g in groups]
    pre = config["preprocessing"]
    if pre is not None:
        lines += ["", f"## Preprocessing (resize: {pre['resize_method']})", "", "| key | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in pre["data_config"].items()]
    if history:
        names = [k for k in history[0] if k not in ("step", "time")]
        lines += ["", "## Training history", "", "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
        lines += ["| " + " | ".join(_cell(row.get(n)) for n in names) + " |" for row in history]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def upload_folder(folder: Path, repo_id: str, token: Optional[str] = None, private: Optional[bool] = None,
                  commit_message: str = "Upload fastfreeze export") -> str:
    """Create the model repository `repo_id` if needed and upload `folder` to it; returns the commit's URL."""
    from huggingface_hub import HfApi
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
    return str(getattr(info, "commit_url", info))
