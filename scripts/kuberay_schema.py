#!/usr/bin/env python3
"""Write KubeRay's RayCluster schema as JSON Schema, for validating k8s/overlays/ray offline.

    python scripts/kuberay_schema.py ray.io_rayclusters.yaml > k8s/schemas/raycluster-ray.io-v1.json

The input is KubeRay's published CRD (ray-operator/config/crd/bases/ray.io_rayclusters.yaml
in github.com/ray-project/kuberay, at the release the overlay targets). The output is the
``openAPIV3Schema`` of its ``v1`` version, unchanged but for one thing: the Pod template
schema, which the CRD repeats verbatim for the head group and for the worker groups, is
written once under ``$defs`` and referenced twice (the script checks the two copies are
identical before it does). That halves the file; every constraint stays as KubeRay wrote it.
tests/unit/test_deploy.py validates the rendered RayCluster against it with jsonschema.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

TEMPLATE_REF = "#/$defs/podTemplateSpec"


def convert(crd: dict[str, Any], source: str) -> dict[str, Any]:
    """The v1 RayCluster schema of ``crd`` with the Pod template schema shared."""
    assert crd["kind"] == "CustomResourceDefinition", crd["kind"]
    assert crd["spec"]["names"]["kind"] == "RayCluster"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = version["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]["properties"]
    head = spec["headGroupSpec"]["properties"]
    workers = spec["workerGroupSpecs"]["items"]["properties"]
    if head["template"] != workers["template"]:
        raise SystemExit("the head and worker Pod template schemas differ: cannot share them")
    template = head["template"]
    head["template"] = {"$ref": TEMPLATE_REF}
    workers["template"] = {"$ref": TEMPLATE_REF}
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$comment": (
            f"KubeRay RayCluster ray.io/v1 openAPIV3Schema from {source}, converted by"
            " scripts/kuberay_schema.py (the Pod template schema shared under $defs)."
        ),
        **schema,
        "$defs": {"podTemplateSpec": template},
    }


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    path = Path(argv[1])
    source = argv[2] if len(argv) == 3 else path.name
    crd = yaml.safe_load(path.read_text())
    json.dump(convert(crd, source), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
