"""``transformers-qwen3 export MODEL OUT``: a Hub-ready repository folder, optional GGUF files, optional upload.

OUT gets the weights re-saved by transformers' ``save_pretrained`` (safetensors sharded by size, with an index),
``config.json`` with the full ``auto_map``, the three remote-code files, the tokenizer / processor / chat-template
files and ``generation_config.json`` copied byte for byte, ``LICENSE`` and a ``README.md`` model card
(:mod:`transformers_qwen3.export.modelcard`), plus the provenance and evaluation records the card was built from.

``--gguf q8_0,q4_k_m`` writes the GGUF files and the mmproj into a sibling ``OUT-GGUF`` folder with its own card
and LICENSE: the Hub convention (one transformers repo, one ``-GGUF`` repo) keeps ``from_pretrained`` and
``snapshot_download`` from fetching gigabytes of GGUF, lets the Hub file the GGUF repo as a quantization of the
transformers one, and lets llama.cpp users browse only the files they can run.

Both folders are built in temporary folders beside OUT and renamed at the end, so a failure leaves nothing behind.
``--push REPO_ID`` then uploads OUT to REPO_ID (and OUT-GGUF to REPO_ID-GGUF) with huggingface_hub.

The folder's own code never runs unless asked: MODEL is loaded with the installed package's classes, and OUT gets
the installed package's remote-code files. A MODEL whose code files differ from the package's is refused, naming the
files: ``--replace-code`` ships the package's files instead, ``--trust-remote-code`` loads MODEL with its own code
and ships that code as is (only for folders you trust).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoint.hub_folder import HUB_FILES, MODEL_AUTO_MAP, code_differences, copy_code_files
from ..outputs import atomic_folder, check_destination
from .errors import ExportError
from .licensing import LicenseChoice, resolve_license
from .modelcard import (
    CardInputs,
    GGUFFacts,
    build_gguf_card,
    build_model_card,
    human_bytes,
    inspect_gguf,
    inspect_model_folder,
)
from .provenance import (
    EVAL_RESULTS_FILE,
    GGUF_QUALITY_FILE,
    PROVENANCE_FILE,
    read_eval_results,
    read_gguf_quality,
    read_provenance,
)

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json")
RECORD_FILES = (PROVENANCE_FILE, EVAL_RESULTS_FILE)
DEFAULT_SHARD_SIZE = "5GB"


@dataclass
class ExportResult:
    out: Path
    gguf_out: Path | None
    license: LicenseChoice
    files: list[Path] = field(default_factory=list)
    gguf_files: list[Path] = field(default_factory=list)


# ---- checks that run before any heavy work ---------------------------------------------------------------------


def _check_source(src: Path) -> dict:
    if not src.is_dir():
        raise ExportError(f"{src} is not a folder; MODEL must be a model folder in the transformers-qwen3 layout.")
    config_path = src / "config.json"
    if not config_path.is_file():
        raise ExportError(f"{src} has no config.json; MODEL must be a model folder in the transformers-qwen3 layout.")
    from ..formats.folder import read_json_object, validate_folder

    config = read_json_object(config_path, "MODEL must be a model folder in the transformers-qwen3 layout")
    if config.get("model_type") != "qwen3_multimodal":
        raise ExportError(
            f"{config_path} has model_type {config.get('model_type')!r}, not 'qwen3_multimodal'. Bring native Qwen3 "
            "checkpoints into our layout first with `transformers-qwen3 import SRC DST`."
        )
    if not any((src / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise ExportError(
            f"{src} has no tokenizer (tokenizer.json / tokenizer_config.json). A Hub repository must ship one: save "
            "the tokenizer into the folder (tokenizer.save_pretrained(MODEL)) and export again."
        )
    if (config.get("vision_config") or config.get("audio_config")) and not any(
        (src / name).is_file() for name in PROCESSOR_FILES
    ):
        raise ExportError(
            f"{src} is a multimodal model but has no processor files ({' / '.join(PROCESSOR_FILES)}). Save the "
            "processor into the folder (processor.save_pretrained(MODEL)) and export again."
        )
    validate_folder(src)  # config schema, index, safetensors headers and shapes: one clear error, nothing loaded
    return config


def _check_destinations(src: Path, out: Path, gguf_out: Path | None, force: bool) -> None:
    for dst in filter(None, (out, gguf_out)):
        check_destination(dst, force=force, sources=[src])


def _check_code(src: Path, trust_remote_code: bool, replace_code: bool) -> None:
    differing = code_differences(src)
    if differing and not (trust_remote_code or replace_code):
        raise ExportError(
            f"{src}'s code files differ from the installed transformers-qwen3's ({', '.join(differing)}); an export "
            "would publish code this package did not write. Pass --replace-code to ship the installed package's "
            "files instead, or --trust-remote-code to load and ship the folder's own code (folders you trust only)."
        )


def parse_gguf_types(text: str | None) -> list[str]:
    if not text:
        return []
    types = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [t for t in types if t not in GGUF_TYPES]
    if bad:
        raise ExportError(f"unknown GGUF type(s) {', '.join(bad)}; choose from {', '.join(GGUF_TYPES)}.")
    return list(dict.fromkeys(types))


def _converter():
    """The GGUF converter's entry point, imported only when --gguf is used."""
    try:
        from ..convert import convert_checkpoint
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith("transformers_qwen3.convert"):
            raise  # a module the converter needs is missing: a broken installation, shown as it is
        raise ExportError(
            "--gguf needs the GGUF converter (transformers_qwen3.convert.convert_checkpoint), which this "
            f"installation lacks ({err}). Export without --gguf, or install transformers-qwen3 with its converter."
        ) from err
    return convert_checkpoint


def _check_repo_id(repo_id: str | None) -> None:
    if repo_id is None:
        return
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ExportError(f"--push {repo_id!r} is not a valid Hub repo id ({err}).") from err
    if "/" not in repo_id:
        raise ExportError(f"--push {repo_id!r}: give the full id, NAMESPACE/NAME (your user or organisation name).")


# ---- writing ---------------------------------------------------------------------------------------------------


def _load(src: Path, multimodal: bool, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(src, trust_remote_code=trust_remote_code, dtype="auto")
    except Exception as err:  # transformers raises OSError / ValueError / safetensors errors, all bad input here
        raise ExportError(f"cannot load the model from {src}: {' '.join(str(err).split())}") from err
    try:
        loader = AutoProcessor if multimodal else AutoTokenizer
        loader.from_pretrained(src, trust_remote_code=trust_remote_code)  # proves it loads; files are copied as is
    except Exception as err:
        what = "processor" if multimodal else "tokenizer"
        raise ExportError(f"cannot load the {what} from {src}: {' '.join(str(err).split())}") from err
    return model


def _write_model_folder(src: Path, tmp: Path, multimodal: bool, max_shard_size: str, trust_remote_code: bool) -> None:
    source_auto_map = json.loads((src / "config.json").read_text(encoding="utf-8")).get("auto_map") or {}
    model = _load(src, multimodal, trust_remote_code)
    # save_pretrained writes only the saving class's auto_map entry unless the whole map is set (entries merge)
    model.config.auto_map = {**MODEL_AUTO_MAP, **source_auto_map}
    model.save_pretrained(tmp, max_shard_size=max_shard_size)
    del model
    code = HUB_FILES if trust_remote_code else ()  # otherwise the installed package's files (below)
    for name in code + TOKENIZER_FILES + PROCESSOR_FILES + RECORD_FILES + ("generation_config.json",):
        if (src / name).is_file():
            shutil.copyfile(src / name, tmp / name)
    if not all((tmp / name).is_file() for name in HUB_FILES):
        copy_code_files(tmp)
    saved = json.loads((tmp / "config.json").read_text(encoding="utf-8")).get("auto_map") or {}
    lost = sorted(set(MODEL_AUTO_MAP) - set(saved))
    if lost:
        raise RuntimeError(f"save_pretrained dropped auto_map entries {lost}")  # a bug, not bad input


def _write_ggufs(tmp_model: Path, gtmp: Path, types: list[str], name: str) -> list[Path]:
    convert_checkpoint = _converter()
    files: list[Path] = []
    for outtype in types:
        for path in convert_checkpoint(tmp_model, gtmp, outtype, name=name, force=True):
            path = Path(path)
            if path.parent.resolve() != gtmp.resolve():
                raise RuntimeError(f"the converter wrote {path} outside {gtmp}")  # a bug, not bad input
            if path not in files:
                files.append(path)
    return files


def _gguf_facts(paths: list[Path], gtmp: Path, src: Path) -> tuple[list[GGUFFacts], str | None]:
    """What the card says about each GGUF file: read from the file, plus the measured quality where recorded."""
    quality, reference = read_gguf_quality(gtmp, src)
    ggufs = []
    for path in paths:
        g = inspect_gguf(path)
        q = quality.get(path.name, {})
        g.top1_agreement, g.kl_divergence = q.get("top1_agreement"), q.get("kl_divergence")
        ggufs.append(g)
    return ggufs, reference


def _write_licence_and_cards(inputs: CardInputs, src: Path, tmp: Path, gtmp: Path | None) -> None:
    for folder in filter(None, (tmp, gtmp)):
        if inputs.license.text is not None:
            (folder / "LICENSE").write_text(inputs.license.text, encoding="utf-8")
    build_model_card(inputs).save(tmp / "README.md")
    if gtmp is not None:
        build_gguf_card(inputs).save(gtmp / "README.md")
        if not (gtmp / GGUF_QUALITY_FILE).exists() and (src / GGUF_QUALITY_FILE).is_file():
            shutil.copyfile(src / GGUF_QUALITY_FILE, gtmp / GGUF_QUALITY_FILE)


def export_model(
    src: Path,
    out: Path,
    *,
    gguf_types: list[str] = (),
    license_id: str | None = None,
    repo_id: str | None = None,
    max_shard_size: str = DEFAULT_SHARD_SIZE,
    force: bool = False,
    trust_remote_code: bool = False,
    replace_code: bool = False,
) -> ExportResult:
    """Write the repository folder ``out`` (and ``out``-GGUF when ``gguf_types``); see the module docstring."""
    src, out = Path(src), Path(out)
    gguf_types = list(gguf_types)
    gguf_out = out.with_name(out.name + "-GGUF") if gguf_types else None
    config = _check_source(src)
    _check_destinations(src, out, gguf_out, force)
    _check_code(src, trust_remote_code, replace_code)
    if gguf_types:
        _converter()  # fail now, not after the weights were written
    license_choice = resolve_license(src, license_id)
    if license_id is not None:
        _warn_if_dropping_restrictions(src, license_choice)
    provenance = read_provenance(src)  # validates the records before any heavy work
    eval_results = read_eval_results(src)
    multimodal = bool(config.get("vision_config") or config.get("audio_config"))
    card_repo_id = repo_id or out.name
    gguf_repo_id = f"{repo_id}-GGUF" if repo_id and gguf_types else None

    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_folder(out, force=force, sources=[src]))
        gtmp = stack.enter_context(atomic_folder(gguf_out, force=force, sources=[src])) if gguf_out else None
        _write_model_folder(src, tmp, multimodal, max_shard_size, trust_remote_code)
        facts = inspect_model_folder(tmp, name=out.name)
        ggufs, reference = (
            _gguf_facts(_write_ggufs(tmp, gtmp, gguf_types, out.name), gtmp, src) if gtmp else ([], None)
        )
        inputs = CardInputs(
            facts=facts,
            license=license_choice,
            repo_id=card_repo_id,
            provenance=provenance,
            eval_results=eval_results,
            ggufs=ggufs,
            gguf_repo_id=gguf_repo_id,
            gguf_reference=reference,
            transformers_floor=_transformers_floor(),
        )
        _write_licence_and_cards(inputs, src, tmp, gtmp)
        files = sorted(p.relative_to(tmp) for p in tmp.rglob("*") if p.is_file())
        gfiles = sorted(p.relative_to(gtmp) for p in gtmp.rglob("*") if p.is_file()) if gtmp else []
    # the ExitStack renamed OUT-GGUF, then OUT, into place
    return ExportResult(out, gguf_out, license_choice, [out / f for f in files], [gguf_out / f for f in gfiles])


def _warn_if_dropping_restrictions(src: Path, chosen: LicenseChoice) -> None:
    """Relicensing is the user's call, but a RAIL licence requires derivatives to keep its use restrictions."""
    try:
        inherited = resolve_license(src)
    except ExportError:
        return
    if inherited.origin.startswith("inherited") and inherited.restricted and not chosen.restricted:
        print(
            f"warning: {src} is under {inherited.title}, whose use restrictions must be passed on to derivatives; "
            f"make sure you may release this export under {chosen.title}.",
            file=sys.stderr,
        )


def _transformers_floor() -> str | None:
    """The oldest transformers the package declares support for (the lower bound of its requirement), for the
    card; the running transformers when the package is not installed as a distribution (a PYTHONPATH checkout)."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    try:
        declared = [Requirement(line) for line in requires("transformers-qwen3") or []]
    except PackageNotFoundError:
        declared = []
    for req in declared:
        if canonicalize_name(req.name) == "transformers" and not req.marker:
            floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=", "===")]
            if floors:
                return str(min(floors))
    import transformers

    return transformers.__version__


# ---- upload ----------------------------------------------------------------------------------------------------


def push_folder(folder: Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                commit_message: str | None = None) -> str:  # fmt: skip
    """Upload ``folder`` to the Hub repo ``repo_id`` (created if needed) and return the commit URL.

    huggingface_hub reads HF_ENDPOINT and HF_HUB_DISABLE_XET when it is first imported; tests point them at a local
    fake Hub (tests/hub_server.py) in a subprocess.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    # HfHubHTTPError derives from its HTTP library's base error (httpx or httpx2, whichever this huggingface_hub
    # uses), which also covers unreachable endpoints: catching its bases catches both without naming the library.
    network_errors = (HfHubHTTPError, *HfHubHTTPError.__bases__)
    api = HfApi()
    try:
        api.create_repo(repo_id, exist_ok=True, private=private or None)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=revision,
            commit_message=commit_message or f"Upload {Path(folder).name} with transformers-qwen3 export",
        )
    except network_errors as err:
        raise ExportError(
            f"uploading {folder} to {repo_id} failed ({type(err).__name__}: {' '.join(str(err).split())[:300]}); "
            f"{folder} is complete on disk: check the endpoint, your token (`hf auth login`) and rights, then push "
            f"it again with `hf upload {repo_id} {folder}`."
        ) from err
    return info.commit_url


# ---- CLI -------------------------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    parser.add_argument("model", type=Path, help="model folder in the transformers-qwen3 layout")
    parser.add_argument("out", type=Path, help="repository folder to create (GGUF files go to OUT-GGUF)")
    parser.add_argument("--gguf", metavar="TYPES", help=f"comma-separated GGUF types to add: {','.join(GGUF_TYPES)}")
    parser.add_argument(
        "--license",
        metavar="ID",
        help="licence of the export: a Hub licence id (apache-2.0, mit, openrail, ...) or qwen3-mm-rail-1.0. "
        "Default: the source model's licence, or qwen3-mm-rail-1.0 if it declares none",
    )
    parser.add_argument("--push", metavar="REPO_ID", help="upload OUT to this Hub repo (and OUT-GGUF to REPO_ID-GGUF)")
    parser.add_argument("--private", action="store_true", help="create the Hub repo(s) as private")
    parser.add_argument("--revision", metavar="BRANCH", help="branch to upload to (created if missing); default main")
    parser.add_argument("--repo-id", metavar="REPO_ID", help="Hub id to name in the card when not pushing")
    parser.add_argument("--max-shard-size", default=DEFAULT_SHARD_SIZE, help="safetensors shard size (default 5GB)")
    parser.add_argument("--force", action="store_true", help="replace OUT (and OUT-GGUF) if they exist")
    code = parser.add_mutually_exclusive_group()
    code.add_argument(
        "--replace-code",
        action="store_true",
        help="ship the installed package's code files where MODEL's differ from them",
    )
    code.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="load MODEL with its own code files and ship them as they are (only for folders you trust)",
    )


def run(args) -> int:
    gguf_types = parse_gguf_types(args.gguf)
    _check_repo_id(args.push)
    _check_repo_id(args.repo_id)
    if (args.private or args.revision) and not args.push:
        raise ExportError("--private and --revision apply to uploads; add --push REPO_ID.")
    result = export_model(
        args.model,
        args.out,
        gguf_types=gguf_types,
        license_id=args.license,
        repo_id=args.push or args.repo_id,
        max_shard_size=args.max_shard_size,
        force=args.force,
        trust_remote_code=args.trust_remote_code,
        replace_code=args.replace_code,
    )
    print(f"licence: {result.license.title} ({result.license.origin})")
    for path in result.files + result.gguf_files:
        print(f"  {human_bytes(path.stat().st_size):>10}  {path}")
    if args.push:
        for folder, repo in ((result.out, args.push), (result.gguf_out, f"{args.push}-GGUF")):
            if folder is not None:
                url = push_folder(folder, repo, private=args.private, revision=args.revision)
                print(f"pushed {folder} -> {repo}: {url}")
    return 0
