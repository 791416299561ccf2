"""Evaluation reports and drift: domain <-> protobuf (GetVersionReport, GetDriftReport)."""

from __future__ import annotations

from highpeaks_ml.errors import InvalidArgument, quote
from highpeaks_ml.registry.base import ARTIFACT_NAME_PATTERN, ArtifactInfo
from highpeaks_ml.serving.drift import DriftReport
from highpeaks_ml.serving.drift_figures import FIGURE_PREFIX
from highpeaks_ml.v1 import registry_pb2

#: What each requested format sends (figures: ``fig-<name>.png``).
REPORT_HTML = "report.html"
REPORT_JSON = "report.json"


def report_artifact(fmt: int, figure: str) -> str:
    """The artifact name a GetVersionReport request asks for."""
    if fmt in (registry_pb2.REPORT_FORMAT_UNSPECIFIED, registry_pb2.REPORT_FORMAT_HTML):
        return REPORT_HTML
    if fmt == registry_pb2.REPORT_FORMAT_JSON:
        return REPORT_JSON
    if fmt == registry_pb2.REPORT_FORMAT_FIGURE:
        if not figure:
            raise InvalidArgument("format FIGURE needs the figure's name (figure)")
        name = f"fig-{figure}.png"
        # A stored figure is an artifact (its name was checked at publish): a name
        # that cannot be one is refused here, before any lookup, quoted cut.
        # "served-<feature>" names carry a feature's name, which may be any text.
        if not figure.startswith(FIGURE_PREFIX) and not ARTIFACT_NAME_PATTERN.fullmatch(name):
            raise InvalidArgument(
                f"invalid figure name {quote(figure)}: figures are named with lowercase"
                " letters, digits, '.', '_' or '-' (ReportInfo.figures lists them)"
            )
        return name
    raise InvalidArgument(f"unknown report format {fmt}")


def figure_names(artifacts: tuple[ArtifactInfo, ...]) -> list[str]:
    """The figures of a report, by name (``fig-roc.png`` -> ``roc``)."""
    return [
        a.name[len("fig-") : -len(".png")]
        for a in artifacts
        if a.name.startswith("fig-") and a.name.endswith(".png")
    ]


def artifact_to_proto(a: ArtifactInfo) -> registry_pb2.Artifact:
    """ArtifactInfo -> Artifact."""
    return registry_pb2.Artifact(
        name=a.name, sha256=a.sha256, size_bytes=a.size_bytes, media_type=a.media_type
    )


def drift_to_proto(report: DriftReport, enabled: bool) -> registry_pb2.DriftReport:
    """DriftReport -> DriftReport."""
    return registry_pb2.DriftReport(
        model_name=report.model_name,
        version=report.version,
        enabled=enabled,
        window_seconds=report.window_s,
        rows=report.rows,
        training_rows=report.training_rows,
        features=[
            registry_pb2.FeatureDrift(
                name=f.name,
                type=f.type,
                psi=f.psi,
                rows=f.rows,
                level=f.level,
                bins=list(f.bins),
                training=list(f.training),
                served=list(f.served),
            )
            for f in report.features
        ],
    )
