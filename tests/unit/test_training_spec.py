"""The executor seam's types and the worker's resource handling, in-process (no server).

The real executors run in the integration tests (tests/integration/test_training_api.py:
the memory bound, placement, cancel, crashes).
"""

from __future__ import annotations

import dataclasses
import pickle

import pytest
from threadpoolctl import threadpool_info

from highpeaks_ml.training import pipeline
from highpeaks_ml.training.catalogue import get_algorithm
from highpeaks_ml.training.datasets import analyse_frame, builtin_frame
from highpeaks_ml.training.jobs import Job, TrainRequest
from highpeaks_ml.training.spec import (
    BuiltinData,
    BuiltinDataset,
    Failed,
    InlineData,
    InlineDataset,
    JobSpec,
    Resources,
    StageChanged,
    Succeeded,
    UploadedDataset,
)
from highpeaks_ml.training.worker import job_resources, run_job


def _spec(**kw) -> JobSpec:
    frame = builtin_frame("iris")
    features = tuple((str(c), "numeric") for c in frame.columns if c != "target")
    algo = get_algorithm(kw.pop("algorithm", "random_forest"))
    base = {
        "job_id": "j1",
        "model_name": "m",
        "algorithm": algo.name,
        "task": "classification",
        "params": algo.validate("classification", kw.pop("params", {"n_estimators": 5})),
        "target": "target",
        "features": features,
        "test_size": 0.2,
        "seed": 0,
        "data": BuiltinData("iris"),
    }
    base.update(kw)
    return JobSpec(**base)


def test_specs_are_frozen_and_cross_a_pipe():
    spec = _spec(resources=Resources(cpus=2, memory_mb=512))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.seed = 1  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(spec)) == spec


def test_a_job_runs_from_its_spec_alone_and_returns_bytes_and_metadata():
    events = []
    final = run_job(_spec(resources=Resources(cpus=1, memory_mb=0)), events.append)
    assert isinstance(final, Succeeded), final
    assert [e.stage for e in events if isinstance(e, StageChanged)] == [
        "LOADING_DATA",
        "FITTING",
        "EVALUATING",
        "EXPORTING",
        "VERIFYING",
    ]
    result = pickle.loads(pickle.dumps(final.result))
    assert result.onnx[:2] and result.meta.job_id == "j1" and result.meta.model_name == "m"
    assert result.meta.dataset["source"] == "builtin:iris" and result.meta.dataset["rows"] == 150
    assert result.metrics == result.meta.metrics and "accuracy" in result.metrics


def test_inline_bytes_train_like_an_upload():
    frame = builtin_frame("iris")
    csv = frame.to_csv(index=False).encode()
    data = InlineData(columns=analyse_frame(frame), csv=csv)
    final = run_job(_spec(data=data), lambda e: None)
    assert isinstance(final, Succeeded), final
    assert final.result.meta.dataset["source"] == "inline"


def test_a_job_error_is_a_failed_event_not_an_exception():
    final = run_job(_spec(target="nope"), lambda e: None)
    assert isinstance(final, Failed) and "nope" in final.reason


def test_cpus_become_n_jobs_and_the_thread_pools_cap():
    algo = get_algorithm("random_forest")
    frame = builtin_frame("iris")
    features = [(str(c), "numeric") for c in frame.columns if c != "target"]
    data = pipeline.prepare(frame, "target", features, "classification")
    params = algo.validate("classification", {})
    model = pipeline.build(algo, data, params, 0, n_jobs=3)
    assert model.steps[-1][1].n_jobs == 3
    assert pipeline.build(algo, data, params, 0).steps[-1][1].n_jobs == 1
    with job_resources(Resources(cpus=1, memory_mb=0), enforce_memory=False) as limit:
        assert limit == 0
        assert {pool["num_threads"] for pool in threadpool_info()} <= {1}


def test_job_records_keep_the_typed_source_in_the_old_json_shape():
    for source, shape in (
        (UploadedDataset("ab" * 32), {"kind": "dataset_id", "value": "ab" * 32}),
        (BuiltinDataset("wine"), {"kind": "builtin", "value": "wine"}),
        (InlineDataset(({"x": 1},), 1), {"kind": "inline", "row_count": 1}),
    ):
        job = Job("j", "m", "knn", TrainRequest("m", "knn", source))
        data = job.to_dict()
        assert shape.items() <= data["request"]["dataset"].items()
        back = Job.from_dict(data).request.dataset
        assert type(back) is type(source)
    # The fingerprint sees every parameter, inline rows included.
    a = TrainRequest("m", "knn", InlineDataset(({"x": 1},), 1), idempotency_key="k")
    assert a.fingerprint() == dataclasses.replace(a, idempotency_key="other").fingerprint()
    assert (
        a.fingerprint()
        != dataclasses.replace(a, dataset=InlineDataset(({"x": 2},), 1)).fingerprint()
    )
    assert a.fingerprint() != dataclasses.replace(a, cpus=2).fingerprint()
