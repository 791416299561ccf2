"""The served-vs-training section of the report page (serving/drift_figures.py)."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
from PIL import Image

from highpeaks_ml.serving import drift_figures
from highpeaks_ml.serving.drift import VersionDrift, build_profile
from highpeaks_ml.training.report import FIG_HEIGHT, FIG_WIDTH

NUMERIC = 14  # with the categorical one: more features than the section draws


def _drift() -> VersionDrift:
    rng = np.random.default_rng(5)
    cols = [(f"n{i:02d}", "numeric", rng.normal(size=1000)) for i in range(NUMERIC)]
    cols.append(("colour", "categorical", rng.choice(["red", "green", "blue", ""], size=1000)))
    columns = (*(("x", i) for i in range(NUMERIC)), ("c", 0))
    return VersionDrift("m", 1, build_profile(cols), columns, window_s=600)


def _pngs(section: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"base64,([^\"]+)\"", section)]


def test_no_traffic_is_one_note_and_the_page_keeps_its_bytes():
    rep = _drift().report()
    section = drift_figures.section_html(rep)
    assert "No served traffic was seen yet" in section and "last 600 s" in section
    assert _pngs(section) == []
    page = b"<html><body><p>stored</p></body></html>"
    out = drift_figures.add_section(page, section).decode()
    assert out.startswith("<html><body><p>stored</p>") and out.endswith("</body></html>")
    assert out.replace(section + "\n", "").encode() == page


def test_traffic_draws_the_most_drifted_features_bounded():
    vd = _drift()
    rng = np.random.default_rng(6)
    x = rng.normal(size=(800, NUMERIC)).astype(np.float32)
    x[:, 3] += 4.0  # the most drifted numeric feature
    colour = rng.choice(["red", "purple", ""], size=(800, 1)).astype(object)
    vd.observe({"x": x, "c": colour})
    rep = vd.report()
    shown = drift_figures.shown(rep)
    assert len(shown) == drift_figures.MAX_FEATURES < len(rep.features)
    assert {shown[0].name, shown[1].name} == {"n03", "colour"}  # PSI far above the rest
    section = drift_figures.section_html(rep)
    assert f"The {drift_figures.MAX_FEATURES} features with the highest PSI of 15" in section
    pngs = _pngs(section)
    assert len(pngs) == drift_figures.MAX_FEATURES
    for png in pngs:
        with Image.open(io.BytesIO(png)) as img:
            assert img.format == "PNG" and img.size == (FIG_WIDTH, FIG_HEIGHT)
    captions = re.findall(r"<figcaption>([^<]*)</figcaption>", section)
    cat = next(c for c in captions if c.startswith("colour"))
    assert "(categorical): PSI" in cat and "significant" in cat and "800 rows served" in cat
    # A categorical chart's bins: kept categories, other, missing.
    colour = next(f for f in rep.features if f.name == "colour")
    assert colour.bins[-2:] == ("(other)", "(missing)") and len(colour.bins) == 5
    assert drift_figures.figure_feature("served-colour", rep) is colour
    assert drift_figures.figure_feature("served-nope", rep) is None
    assert drift_figures.figure_feature("roc", rep) is None
