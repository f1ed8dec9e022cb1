"""Which Fluid CRDs local clusters install: Fluid's own, unmodified (`../shared/fluid-crds`
beside the repository, or `FLUIDFED_FLUID_CRDS`), so what the agent writes is checked
against Fluid's real schemas; a checkout without them falls back to fluidfed's own
(`crds/fluid.yaml`, which types only the fields fluidfed sets) and says so."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "fluid-crds"
OWN = Path(__file__).with_name("crds") / "fluid.yaml"
# the kinds fluidfed writes or reads (not Fluid's whole API: the rest only weighs on the
# API server)
FILES = [
    f"data.fluid.io_{plural}.yaml"
    for plural in (
        "datasets",
        "dataloads",
        "thinruntimes",
        "thinruntimeprofiles",
        "alluxioruntimes",
        "jindoruntimes",
        "juicefsruntimes",
        "efcruntimes",
        "vineyardruntimes",
    )
]


@dataclass(frozen=True, slots=True)
class FluidCRDs:
    documents: list[dict[str, Any]]
    source: Path
    real: bool  # Fluid's own; False: fluidfed's fallback
    searched: Path = SHARED  # where Fluid's own were looked for

    @property
    def names(self) -> set[str]:
        return {d["metadata"]["name"] for d in self.documents}

    def describe(self) -> str:
        if self.real:
            return f"Fluid's own CRDs from {self.source}"
        return (
            f"Fluid's own CRDs are not at {self.searched} (set FLUIDFED_FLUID_CRDS to their "
            f"directory): falling back to fluidfed's own ({self.source}), which check only "
            "the fields fluidfed sets, not what Fluid's schemas refuse"
        )


def find(directory: Path | None = None) -> FluidCRDs:
    """Fluid's own CRDs if they are there, else fluidfed's fallback."""
    given = os.environ.get("FLUIDFED_FLUID_CRDS")
    where = directory or (Path(given) if given else SHARED)
    if all((where / f).is_file() for f in FILES):
        docs = [yaml.safe_load((where / f).read_text()) for f in FILES]
        return FluidCRDs(docs, where, True)
    docs = [d for d in yaml.safe_load_all(OWN.read_text()) if d]
    return FluidCRDs(docs, OWN, False, where)
