#!/usr/bin/env python3
"""Drives `caliper serve --grpc-addr` with clients nobody here wrote: tritonclient[grpc] with its
default arguments (InferInput.set_data_from_numpy and InferRequestedOutput, which send
raw_input_contents and read raw_output_contents) and the standard gRPC health checking stubs
(grpcio-health-checking). Prints one JSON object of what it saw; tests/serve/grpc.rs asserts on
it and compares the probabilities with the HTTP V2 JSON answers.

Usage: grpc_client.py ADDR REQUEST.json, where REQUEST.json holds
  {"model": NAME, "tensor": [[...C*H*W floats...], ...], "chw": [C, H, W],
   "images": [PATH, ...], "admin_token": TOKEN}
"""

import json
import sys

import grpc
import numpy as np
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException


def parameters(result):
    """The response parameters as plain values."""
    out = {}
    for key, p in result.get_response().parameters.items():
        out[key] = getattr(p, p.WhichOneof("parameter_choice"))
    return out


def answer(result, names):
    """The named outputs (BYTES as text), the parameters, the id and the version."""
    out = {}
    for name in names:
        a = result.as_numpy(name)
        out[name] = [x.decode() for x in a.reshape(-1)] if a.dtype == np.object_ else a.tolist()
    out["parameters"] = parameters(result)
    out["id"] = result.get_response().id
    out["model_version"] = result.get_response().model_version
    return out


def error_of(call):
    """The gRPC status name a call fails with (None if it succeeds)."""
    try:
        call()
    except InferenceServerException as e:
        return str(e.status()).replace("StatusCode.", "")
    return None


def main():
    addr, request_path = sys.argv[1], sys.argv[2]
    with open(request_path) as f:
        req = json.load(f)
    model = req["model"]
    client = triton.InferenceServerClient(url=addr)
    seen = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "unknown_model_ready": client.is_model_ready("no-such-model"),
    }
    meta = client.get_model_metadata(model, as_json=True)
    seen["metadata"] = meta
    seen["server_metadata"] = client.get_server_metadata(as_json=True)

    # FP32 [N, C, H, W], preprocessed by the test: the default raw_input_contents path.
    tensor = np.array(req["tensor"], dtype=np.float32).reshape([-1] + req["chw"])
    fp32 = triton.InferInput(meta["inputs"][0]["name"], list(tensor.shape), "FP32")
    fp32.set_data_from_numpy(tensor)
    outputs = ["probabilities", "label", "confidence", "prediction_id", "is_ood", "ood_score"]
    result = client.infer(
        model,
        [fp32],
        outputs=[triton.InferRequestedOutput(n) for n in outputs],
        request_id="grpc-1",
    )
    seen["fp32"] = answer(result, outputs)

    # BYTES [N] of encoded images, no outputs named: the server's defaults.
    blobs = [open(p, "rb").read() for p in req["images"]]
    images = triton.InferInput("image", [len(blobs)], "BYTES")
    images.set_data_from_numpy(np.array(blobs, dtype=np.object_))
    result = client.infer(model, [images])
    seen["bytes"] = answer(result, ["probabilities", "label"])
    seen["bytes"]["outputs"] = [o.name for o in result.get_response().outputs]

    bad_shape = triton.InferInput(fp32.name(), [1, 3, 28, 28], "FP32")
    bad_shape.set_data_from_numpy(np.zeros([1, 3, 28, 28], dtype=np.float32))
    admin = {"authorization": "Bearer " + req["admin_token"]}
    seen["errors"] = {
        "unknown_model_infer": error_of(lambda: client.infer("no-such-model", [fp32])),
        "unknown_model_metadata": error_of(lambda: client.get_model_metadata("no-such-model")),
        "bad_shape": error_of(lambda: client.infer(model, [bad_shape])),
        "unknown_output": error_of(
            lambda: client.infer(model, [fp32], outputs=[triton.InferRequestedOutput("nope")])
        ),
        "index_without_token": error_of(lambda: client.get_model_repository_index()),
        "load_with_wrong_token": error_of(
            lambda: client.load_model(model, headers={"authorization": "Bearer wrong"})
        ),
    }
    index = client.get_model_repository_index(headers=admin, as_json=True)
    seen["index"] = index.get("models", [])
    seen["unload"] = error_of(lambda: client.unload_model(model, headers=admin))
    seen["after_unload"] = {
        "model_ready": client.is_model_ready(model),
        "infer": error_of(lambda: client.infer(model, [fp32])),
        "index": client.get_model_repository_index(headers=admin, as_json=True).get("models", []),
    }
    seen["load"] = error_of(lambda: client.load_model(model, headers=admin))
    seen["after_load_model_ready"] = client.is_model_ready(model)

    # The standard health service, as a generic probe calls it.
    with grpc.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        health = {}
        for service in ["", "inference.GRPCInferenceService"]:
            r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            health[service] = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
        try:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
            health["unknown"] = "OK"
        except grpc.RpcError as e:
            health["unknown"] = e.code().name
        seen["health"] = health
    json.dump(seen, sys.stdout)


if __name__ == "__main__":
    main()
