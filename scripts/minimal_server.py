#!/usr/bin/env python
"""The serving benchmark's yardstick: the least a gRPC model server can do per call.

    python scripts/minimal_server.py --model NAME=PATH.onnx [--model ...]

A grpc.aio server that answers the two prediction RPCs of the real server
with nothing around them: no interceptors, no metrics, no logging, no
validation beyond what parsing does, no thread pool. Per call it parses the
request, wraps the raw input bytes with ``np.frombuffer``, runs the model's
onnxruntime session inline on the event loop (the server's own session
options) and answers with the outputs as raw bytes:

- ``/inference.GRPCInferenceService/ModelInfer`` (the Open Inference
  Protocol v2; raw_input_contents only, one input);
- ``/highpeaks_ml.v1.PredictService/Predict`` (the native API; raw tensor
  only), answering labels and probabilities like the real server.

It prints ``PORT <n>`` once listening. ``scripts/bench_serving.py`` runs it
next to ``highpeaks-ml serve`` and prints every measurement as a ratio to it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from highpeaks_ml.api import oip_messages as msgs  # noqa: E402
from highpeaks_ml.v1 import predict_pb2  # noqa: E402

_NUMPY = {1: np.float32, 2: np.float64, 3: np.int64, 4: np.int32}  # DataType -> dtype
_FP = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}
_OIP_NAME = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
_PROTO_TYPE = {np.dtype(np.float32): 1, np.dtype(np.int64): 3}


class _Model:
    def __init__(self, path: str, options: Any) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]


async def _serve(models: dict[str, _Model]) -> None:
    import grpc
    from grpc import aio

    def model_infer(request: Any, context: Any) -> Any:
        model = models[request.model_name]
        inp = request.inputs[0]
        x = np.frombuffer(request.raw_input_contents[0], dtype=_FP[inp.datatype])
        x = x.reshape(tuple(inp.shape))
        outs = model.session.run(model.outputs, {model.input: x})
        resp = msgs.ModelInferResponse(model_name=request.model_name, id=request.id)
        resp.model_version = "1"
        for name, arr in zip(model.outputs, outs, strict=True):
            resp.outputs.add(name=name, datatype=_OIP_NAME[arr.dtype], shape=arr.shape)
            resp.raw_output_contents.append(arr.tobytes())
        return resp

    def predict(request: Any, context: Any) -> Any:
        model = models[request.model.name]
        t = request.tensor
        x = np.frombuffer(t.raw_data, dtype=_NUMPY[t.data_type]).reshape(tuple(t.shape))
        labels, probabilities = model.session.run(model.outputs, {model.input: x})
        resp = predict_pb2.PredictResponse(
            model_name=request.model.name, model_version=1, id=request.id
        )
        for target, arr in ((resp.labels, labels), (resp.probabilities, probabilities)):
            target.data_type = _PROTO_TYPE[arr.dtype]
            target.shape.extend(arr.shape)
            target.raw_data = arr.tobytes()
        return resp

    async def model_infer_async(request: Any, context: Any) -> Any:
        return model_infer(request, context)

    async def predict_async(request: Any, context: Any) -> Any:
        return predict(request, context)

    infer_req, infer_resp = msgs.method_types("ModelInfer")

    class _Noop(aio.ServerInterceptor):
        async def intercept_service(self, continuation: Any, details: Any) -> Any:
            return await continuation(details)

    # Experiments only: MINIMAL_NOOP_INTERCEPTORS=n adds n interceptors that do nothing.
    server = aio.server(
        interceptors=[_Noop() for _ in range(int(os.environ.get("MINIMAL_NOOP_INTERCEPTORS", 0)))]
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                msgs.SERVICE_NAME,
                {
                    "ModelInfer": grpc.unary_unary_rpc_method_handler(
                        model_infer_async,
                        request_deserializer=infer_req.FromString,
                        response_serializer=infer_resp.SerializeToString,
                    )
                },
            ),
            grpc.method_handlers_generic_handler(
                "highpeaks_ml.v1.PredictService",
                {
                    "Predict": grpc.unary_unary_rpc_method_handler(
                        predict_async,
                        request_deserializer=predict_pb2.PredictRequest.FromString,
                        response_serializer=predict_pb2.PredictResponse.SerializeToString,
                    )
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"PORT {port}", flush=True)
    await server.wait_for_termination()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", default=[], help="NAME=PATH.onnx")
    args = parser.parse_args()
    from highpeaks_ml.config import Settings
    from highpeaks_ml.serving.providers import session_options

    options = session_options(Settings.load({"device": "cpu"}))
    models = {}
    for spec in args.model:
        name, _, path = spec.partition("=")
        models[name] = _Model(path, options)
    asyncio.run(_serve(models))
    return 0


if __name__ == "__main__":
    sys.exit(main())
