"""Reports and drift through a real server: GetVersionReport, GetDriftReport, the CLI."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from PIL import Image

from highpeaks_ml.client import Client
from highpeaks_ml.launcher import ServerProcess
from highpeaks_ml.serving import drift_figures
from highpeaks_ml.training.report import FIG_HEIGHT, FIG_WIDTH
from tests.conftest import ROOT
from tests.support import chromium
from tests.support.serving_models import imported_logreg

FEATURES = ("f0", "f1", "f2", "f3")


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.target, timeout=60) as c:
        yield c


def _draw(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.normal(loc=[0.0, 5.0, -2.0, 10.0], scale=[1.0, 2.0, 0.5, 3.0], size=(n, 4))


def _train(client: Client, tmp_path) -> int:
    rng = np.random.default_rng(7)
    X = _draw(rng, 3000)
    y = X @ np.array([1.0, -0.5, 2.0, 0.1]) + rng.normal(0, 0.1, len(X))
    path = tmp_path / "train.csv"
    lines = [",".join([*FEATURES, "y"])]
    lines += [",".join(f"{v:.5f}" for v in (*row, t)) for row, t in zip(X, y, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    ds = client.upload_dataset(path, name="gauss", target="y")
    job = client.start_training("gauss", "ridge", ds.id, {}, target="y")
    final = client.wait_job(job.id, timeout=180)
    assert final.model_version == 1, final
    return int(final.model_version)


def _cli(server: ServerProcess, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIGHPEAKS_ML_")}
    return subprocess.run(
        [sys.executable, "-m", "highpeaks_ml.cli", *argv, "--target", server.target],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


def test_report_and_drift_of_a_trained_version(client, server, tmp_path):
    version = _train(client, tmp_path)
    meta = client.get_version("gauss", version)
    names = {a.name for a in meta.artifacts}
    assert {"report.html", "report.json", "profile.json", "fig-residuals-histogram.png"} <= names

    info, data = client.get_report("gauss", fmt="json")
    doc = json.loads(data)
    assert doc["metrics"]["r2"] > 0.9 and info.artifact.name == "report.json"
    assert set(info.figures) == {f["name"] for f in doc["figures"]}
    _info, png = client.get_report("gauss", version=1, fmt="figure", figure="predicted-vs-actual")
    assert png.startswith(b"\x89PNG")
    with pytest.raises(grpc.RpcError) as err:
        client.get_report("gauss", fmt="figure", figure="roc")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "has no figure 'roc'" in err.value.details()

    out = tmp_path / "report.html"
    r = _cli(server, "models", "report", "gauss", "--version", "1", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes().startswith(b"<!DOCTYPE html>")
    # No traffic yet: the stored page plus a one-line note, no served figure.
    before = out.read_text()
    assert "No served traffic was seen yet" in before and "no served traffic seen yet" in r.stderr
    assert 'class="served"' not in before

    # Nothing served yet: no rows, no PSI.
    empty = client.get_drift("gauss")
    assert empty.enabled and empty.rows == 0 and empty.training_rows > 2000

    # Traffic from the training distribution: batches, and single rows on a stream.
    rng = np.random.default_rng(99)
    for _ in range(6):
        client.predict("gauss", _draw(rng, 500).astype(np.float32))
    for row in _draw(rng, 20).astype(np.float32):
        client.predict("gauss", row[None, :])
    rep = client.get_drift("gauss")
    assert rep.rows == 3020
    assert all(f.psi < 0.1 for f in rep.features), [(f.name, f.psi) for f in rep.features]

    # Shift f2 by 3 standard deviations.
    shifted = _draw(rng, 3000)
    shifted[:, 2] += 3 * 0.5
    for chunk in np.array_split(shifted.astype(np.float32), 6):
        client.predict("gauss", chunk)
    rep = client.get_drift("gauss")
    top = rep.features[0]
    assert top.name == "f2" and top.psi > 0.25 and top.level == "significant"
    assert all(f.psi < 0.1 for f in rep.features[1:])

    r = _cli(server, "models", "drift", "gauss")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "6020 rows served" in lines[0]
    assert lines[1].split()[:2] == ["FEATURE", "TYPE"] and lines[2].split()[0] == "f2"
    as_json = json.loads(_cli(server, "models", "drift", "gauss", "--json").stdout)
    assert as_json["features"][0]["name"] == "f2"

    # With traffic, the page sent carries the live served-vs-training section.
    r = _cli(server, "models", "report", "gauss", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "served inputs vs training: 6020 rows, 4 features drawn" in r.stderr
    after = out.read_text()
    section = after[after.index(f"<h2>{drift_figures.HEADING}</h2>") :]
    assert "6020 rows served" in section and "PSI" in section
    pngs = [
        base64.b64decode(m) for m in re.findall(r'class="served"><img[^>]*base64,([^"]+)"', after)
    ]
    assert len(pngs) == 4  # one per feature (all four were served)
    for png in pngs:
        with Image.open(io.BytesIO(png)) as img:
            assert img.format == "PNG" and img.size == (FIG_WIDTH, FIG_HEIGHT)
    captions = re.findall(r'class="served">.*?<figcaption>([^<]*)</figcaption>', after)
    assert captions[0].startswith("f2 (numeric): PSI") and "6020 rows served" in captions[0]
    # The stored artifact is unchanged: both pages minus their live part are its bytes.
    info, _page = client.get_report("gauss")
    assert info.served_features[0] == "f2" and info.served_rows == 6020
    stored = next(a for a in meta.artifacts if a.name == "report.html")
    assert info.stored.sha256 == stored.sha256 != info.artifact.sha256
    for page in (before, after):
        cut = page.index(f"<h2>{drift_figures.HEADING}</h2>")
        bare = (page[:cut] + page[page.rindex("</body>") :]).encode()
        assert hashlib.sha256(bare).hexdigest() == stored.sha256
    # One feature's figure on its own.
    info, png = client.get_report("gauss", fmt="figure", figure="served-f2")
    assert png.startswith(b"\x89PNG") and info.served_rows == 6020
    _check_in_chromium(out, tmp_path, figures=len(info.figures) + 4)


def _check_in_chromium(page, tmp_path, figures: int) -> None:
    """The page renders with no console error (so no CSP violation) and every figure,
    stored and served, decodes at its size (one inline script, in a copy only)."""
    html = page.read_text()
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!data:)""", html)
    probe = html.replace(
        "style-src 'unsafe-inline'", "style-src 'unsafe-inline'; script-src 'unsafe-inline'"
    ).replace(
        "</body>",
        "<script>window.addEventListener('load', () => { document.body.dataset.figures ="
        f" [...document.images].filter(i => i.complete && i.naturalWidth === {FIG_WIDTH}"
        f" && i.naturalHeight === {FIG_HEIGHT}).length; }});</script></body>",
    )
    checked = tmp_path / "probe.html"
    checked.write_text(probe)
    dom = chromium.open_page(checked, "--dump-dom", "--virtual-time-budget=5000")
    assert dom.console == []
    assert f'data-figures="{figures}"' in dom.output


def test_imported_versions_have_no_report_or_profile(client):
    exp = imported_logreg("ext")
    client.import_model("ext", exp.onnx, task="classification", class_labels=["0", "1", "2"])
    for call in (lambda: client.get_report("ext"), lambda: client.get_drift("ext")):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        client.get_report("ext")
    assert "imported versions have no report" in err.value.details()
