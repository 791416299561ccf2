#!/usr/bin/env python
"""Registry storage benchmark: the local directory vs S3, for one 30 MB model.

    python scripts/bench_store.py                  # SeaweedFS on loopback (the test server)
    python scripts/bench_store.py --mb 100 --runs 5
    python scripts/bench_store.py --store s3://bucket/prefix   # a real bucket (AWS_* env)

Measured, per backend, as the median of ``--runs`` runs:

- **publish**: ``ModelStore.publish`` of a real ONNX model of ``--mb`` MB (one
  MatMul with a float32 weight of that size), without the server's load check
  (the same on both backends): hashing, the write (local: staging, fsync,
  rename; S3: upload, then the manifest with If-None-Match), the listing;
- **first load**: what a serving replica does the first time a version is
  asked for: resolve, ``read_model`` (S3: download to the local cache, sha256
  check) and creating the onnxruntime session, on a *second* store instance
  (another replica) with an empty cache;
- **cached load**: the same read again on that replica (S3: from its local
  cache, sha256 checked);

and the polling cost of a serving replica on S3: the requests one poll sends
(for ``--models`` models of 5 versions each, unchanged since the last poll and
after one alias move), times 60 / ``--poll-s`` for requests per minute.

With the default SeaweedFS on 127.0.0.1 the S3 figures are a floor (no network
between the replica and the store); against a real bucket they include it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from highpeaks_ml.registry.base import ModelStore, VersionMeta  # noqa: E402
from highpeaks_ml.registry.local import LocalModelStore  # noqa: E402
from highpeaks_ml.registry.s3 import S3Location, S3ModelStore  # noqa: E402


def onnx_model(mb: float) -> bytes:
    """A valid ONNX model whose weight is ``mb`` MB: Y = X @ W, W float32 [1000, k]."""
    from onnx import TensorProto, helper, numpy_helper

    k = max(1, int(mb * 1024 * 1024 / 4 / 1000))
    w = np.random.default_rng(0).standard_normal((1000, k), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        "bench",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 1000])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, k])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _meta() -> VersionMeta:
    return VersionMeta("", 0, 0.0, "imported", "regression")


def _load(store: ModelStore, name: str) -> None:
    import onnxruntime as ort

    meta = store.resolve(name)
    data = store.read_model(name, meta.version)
    ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def bench(label: str, make: Any, model: bytes, runs: int) -> dict[str, float]:
    publish, first, cached = [], [], []
    for i in range(runs):
        writer: ModelStore = make("writer")
        name = f"bench-{i}-{uuid.uuid4().hex[:6]}"
        t = time.perf_counter()
        writer.publish(name, model, _meta())
        publish.append(time.perf_counter() - t)
        reader: ModelStore = make(f"reader-{i}")
        t = time.perf_counter()
        _load(reader, name)
        first.append(time.perf_counter() - t)
        t = time.perf_counter()
        reader.read_model(name, 1)
        cached.append(time.perf_counter() - t)
    out = {
        "publish": statistics.median(publish),
        "first load": statistics.median(first),
        "cached read": statistics.median(cached),
    }
    print(
        f"{label:<8} publish {out['publish'] * 1000:8.1f} ms   first load (read + session)"
        f" {out['first load'] * 1000:8.1f} ms   read again {out['cached read'] * 1000:7.1f} ms"
    )
    return out


def polling(make: Any, models: int, poll_s: float) -> None:
    writer: S3ModelStore = make("poll-writer")
    for m in range(models):
        for _v in range(5):
            writer.publish(f"poll-{m}", b"x" * 1000, _meta(), ("prod",))
    reader: S3ModelStore = make("poll-reader")
    reader.list_models()

    def one_poll() -> int:
        before = sum(reader.requests.values())
        reader._poll(force=True)
        return sum(reader.requests.values()) - before

    idle = one_poll()
    writer.set_alias("poll-0", "prod", 2)
    moved = one_poll()
    per_min = 60.0 / poll_s
    print(
        f"polling  {models} models x 5 versions: {idle} request(s) per poll when nothing"
        f" changed ({idle * per_min:.0f}/min per replica at --store-poll-s {poll_s:g});"
        f" {moved} after an alias move (the LIST + one GET of the alias document)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=30.0, help="model size in MB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--store", default="", help="s3://bucket/prefix (default: SeaweedFS)")
    parser.add_argument("--models", type=int, default=10, help="models for the polling figure")
    parser.add_argument("--poll-s", type=float, default=5.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-store-"))
    server = None
    if args.store:
        url = args.store.rstrip("/") + f"/bench-{uuid.uuid4().hex[:8]}"
    else:
        from tests.support.s3_server import S3Server

        server = S3Server(work / "s3").start()
        os.environ.update(server.env())
        url = server.url(f"bench-{uuid.uuid4().hex[:8]}")
    try:
        model = onnx_model(args.mb)
        print(f"model: {len(model) / 1e6:.1f} MB ONNX; median of {args.runs} run(s)")

        def local(tag: str) -> ModelStore:
            s = LocalModelStore(work / "local")
            s.start()
            return s

        def s3(tag: str) -> S3ModelStore:
            s = S3ModelStore(S3Location.parse(url), work / tag, poll_s=args.poll_s)
            s.start()
            return s

        bench("local", local, model, args.runs)
        bench("s3", s3, model, args.runs)
        polling(s3, args.models, args.poll_s)
    finally:
        if server is not None:
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
