"""Licence policy of exports: the Hub's licence ids, which licences carry use restrictions, our own licence (its
text is package data in ``licenses/``, its Attachment A summarised in :data:`USE_RESTRICTIONS`), and which licence
an export gets (:func:`resolve_license`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from huggingface_hub import ModelCard

from .errors import ExportError
from .provenance import PROVENANCE_FILE, read_provenance

OUR_LICENSE_NAME = "qwen3-mm-rail-1.0"
OUR_LICENSE_TITLE = "Qwen3-MM Responsible AI License 1.0"
OUR_LICENSE_RESOURCE = "QWEN3-MM-RAIL-1.0.md"

# The Hub's accepted `license:` ids (huggingface/hub-docs, docs/hub/repositories-licenses.md, plus the Llama 3.x
# ids added there later). Anything else must be `other` with `license_name` / `license_link` and a LICENSE file.
HUB_LICENSE_IDS = frozenset(
    """
    apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
    afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0
    cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0
    cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0
    cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 agpl-3.0 gfdl gpl
    gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc lppl-1.3c ms-pl mpl-2.0 odc-by odbl openrail++ osl-3.0 postgresql
    ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license llama2 llama3 llama3.1 llama3.2 llama3.3 gemma
    unknown other
    """.split()
)
# Licences whose terms carry use-based restrictions: the card then has a "Use restrictions" section.
RAIL_LICENSE_IDS = frozenset(
    {
        "openrail",
        "openrail++",
        "bigscience-openrail-m",
        "creativeml-openrail-m",
        "bigscience-bloom-rail-1.0",
        "bigcode-openrail-m",
        OUR_LICENSE_NAME,
    }
)
LICENSE_FILE_NAMES = ("LICENSE", "LICENSE.md", "LICENSE.txt")

# Attachment A of our licence, one line each, for the card (the LICENSE file holds the binding text).
USE_RESTRICTIONS = (
    "weapons of any kind and military use, including targeting and weapon-system operation",
    "anything that violates applicable law",
    "fraud, scams, impersonation, deliberate disinformation, or hiding that content is machine-generated "
    "where that deceives people",
    "surveillance that violates rights: mass surveillance, tracking people without a lawful basis, real-time "
    "biometric identification in public spaces, inferring sensitive traits from faces or voices",
    "harassment, threats, stalking, defamation, doxxing, encouraging self-harm",
    "discrimination on protected characteristics, and fully automated decisions with legal or similarly "
    "significant effects (jobs, credit, housing, benefits ...) without human review",
    "sexual content involving minors, and non-consensual intimate content of real people",
    "medical or legal advice without the oversight of a qualified professional",
    "unsupervised control of safety-critical systems (vehicles, medical devices, infrastructure)",
    "exploiting the vulnerabilities of people because of age, disability or situation",
    "malware and attacks on systems you are not authorised to test",
)


@dataclass(frozen=True)
class LicenseChoice:
    hub_id: str  # the card's `license:` value
    name: str | None = None  # `license_name` (only with hub_id "other")
    link: str | None = None  # `license_link`
    text: str | None = None  # content of the LICENSE file to write; None = write none
    origin: str = ""  # where the choice came from, for the export summary

    @property
    def restricted(self) -> bool:
        return self.hub_id in RAIL_LICENSE_IDS or (self.name or "") in RAIL_LICENSE_IDS

    @property
    def title(self) -> str:
        if self.name == OUR_LICENSE_NAME:
            return OUR_LICENSE_TITLE
        return self.name if self.hub_id == "other" and self.name else self.hub_id


def our_license_text() -> str:
    return (resources.files(__package__) / "licenses" / OUR_LICENSE_RESOURCE).read_text(encoding="utf-8")


def our_license() -> LicenseChoice:
    return LicenseChoice("other", OUR_LICENSE_NAME, "LICENSE", our_license_text(), "the project's licence")


def accepted_license_ids() -> list[str]:
    return sorted(HUB_LICENSE_IDS | {OUR_LICENSE_NAME})


def _pointer_text(hub_id: str) -> str:
    return (
        f"This model is distributed under the license with the Hugging Face Hub id `{hub_id}`.\n"
        "The full text is not bundled by transformers-qwen3; replace this file with the license's full text "
        "before publishing if the license requires a copy to accompany the model.\n"
        "List of Hub license ids: https://huggingface.co/docs/hub/repositories-licenses\n"
    )


def _find_license_file(folder: Path, link: str | None) -> Path | None:
    names = ([link] if link and "://" not in link else []) + list(LICENSE_FILE_NAMES)
    for name in names:
        path = (folder / name).resolve()
        if path.is_file() and path.is_relative_to(folder.resolve()):
            return path
    return None


def read_card_metadata(folder: Path) -> dict:
    """The YAML metadata of ``folder/README.md`` ({} if there is no card)."""
    readme = Path(folder) / "README.md"
    if not readme.is_file():
        return {}
    try:
        return ModelCard.load(readme).data.to_dict()
    except Exception as err:  # huggingface_hub raises ValueError / yaml errors for broken front matter
        raise ExportError(f"{readme}: cannot read the model card's YAML metadata ({err}); fix or remove it.") from err


def _license_from_metadata(folder: Path, meta: dict, where: str) -> LicenseChoice | None:
    hub_id = meta.get("license")
    if not hub_id:
        return None
    hub_id = str(hub_id).lower()
    name, link = meta.get("license_name"), meta.get("license_link")
    if hub_id == OUR_LICENSE_NAME:  # a record naming our licence directly
        hub_id, name = "other", OUR_LICENSE_NAME
    if hub_id not in HUB_LICENSE_IDS:
        raise ExportError(
            f"{where} names license {hub_id!r}, which the Hub does not accept. "
            f"Fix it, or pass --license with one of: {', '.join(accepted_license_ids())}."
        )
    found = _find_license_file(folder, link)
    if hub_id == "other":
        if not name:
            raise ExportError(f"{where} says license: other but gives no license_name; add one, or pass --license.")
        if found is not None:
            text = found.read_text(encoding="utf-8")
        elif name == OUR_LICENSE_NAME:
            text = our_license_text()
        else:
            raise ExportError(
                f"{where} names license {name!r} but {folder} has no LICENSE file with its text; "
                "add the file, or pass --license."
            )
        return LicenseChoice("other", name, "LICENSE", text, f"inherited from {where}")
    text = found.read_text(encoding="utf-8") if found is not None else _pointer_text(hub_id)
    return LicenseChoice(hub_id, None, "LICENSE", text, f"inherited from {where}")


def resolve_license(folder: Path, requested: str | None = None) -> LicenseChoice:
    """The licence of an export of ``folder``.

    Without ``requested``, a derived export keeps the licence of the model it was made from: the source card's
    metadata, else the provenance record's ``license``, else (a model this project created) our own licence.
    ``requested`` (``--license``) overrides with a Hub id or our licence's name.
    """
    folder = Path(folder)
    if requested is not None:
        wanted = requested.strip().lower()
        if wanted == OUR_LICENSE_NAME:
            return replace(our_license(), origin="--license")
        if wanted == "other":
            inherited = _license_from_metadata(folder, read_card_metadata(folder), f"{folder}/README.md")
            if inherited is None or inherited.hub_id != "other":
                raise ExportError(
                    "--license other keeps the source's own licence, but the model folder's README.md does not "
                    f"declare license: other with a license_name and LICENSE file. Use {OUR_LICENSE_NAME!r} or a "
                    "Hub id instead."
                )
            return inherited
        if wanted not in HUB_LICENSE_IDS:
            raise ExportError(
                f"unknown licence id {requested!r}. Accepted: {', '.join(accepted_license_ids())} "
                "(Hub ids from https://huggingface.co/docs/hub/repositories-licenses)."
            )
        source = _license_from_metadata(folder, read_card_metadata(folder), "source card")
        found = _find_license_file(folder, None) if source is not None and source.hub_id == wanted else None
        text = found.read_text(encoding="utf-8") if found is not None else _pointer_text(wanted)
        return LicenseChoice(wanted, None, "LICENSE", text, "--license")

    meta = read_card_metadata(folder)
    choice = _license_from_metadata(folder, meta, f"{folder / 'README.md'}")
    if choice is None:
        prov = read_provenance(folder)
        if prov is not None and prov.license:
            choice = _license_from_metadata(
                folder,
                {"license": prov.license, "license_name": prov.license_name, "license_link": prov.license_link},
                f"{folder / PROVENANCE_FILE}",
            )
    return choice if choice is not None else replace(our_license(), origin="default (no licence in the source)")
