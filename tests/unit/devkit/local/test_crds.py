"""Which Fluid CRDs the local clusters install: Fluid's own beside the repository, or
fluidfed's fallback, said plainly."""

import os
from pathlib import Path

import pytest

from devkit.local import crds


def test_fluids_own_crds_are_found_beside_the_repository_or_where_the_variable_says() -> None:
    given = os.environ.get("FLUIDFED_FLUID_CRDS")
    where = Path(given) if given else crds.SHARED
    if not where.is_dir():
        # no registry publishes them: .ci/run finds them beside the repository it cloned
        pytest.skip(f"no {crds.SHARED} in this checkout and FLUIDFED_FLUID_CRDS unset")
    found = crds.find()
    assert found.real and found.source == where
    assert {"datasets.data.fluid.io", "thinruntimeprofiles.data.fluid.io"} <= found.names
    assert "Fluid's own CRDs" in found.describe()


def test_without_them_the_fallback_says_so(tmp_path: Path) -> None:
    found = crds.find(tmp_path)
    assert not found.real and found.source == crds.OWN
    text = found.describe()
    assert str(tmp_path) in text and "FLUIDFED_FLUID_CRDS" in text
    assert "falling back to fluidfed's own" in text
    # the fallback serves every kind fluidfed writes, as Fluid's do
    assert {f.removeprefix("data.fluid.io_").removesuffix(".yaml") for f in crds.FILES} - {
        "vineyardruntimes"
    } <= {n.split(".")[0] for n in found.names}
