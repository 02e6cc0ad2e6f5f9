#!/usr/bin/env python3
"""Calls a KServe V2 HTTP server with Triton's own client, tritonclient.http, using its DEFAULT
arguments: InferInput.set_data_from_numpy(x) sends the tensor as binary data after the JSON
header, InferRequestedOutput(name) asks for binary outputs, and infer(outputs=None) sets
binary_data_output. Used by tests/serve/tritonclient_http.rs against `caliper serve`.

usage: tritonclient_infer.py HOST:PORT MODEL FP32_INPUT_NAME TENSOR.npy IMAGE...

TENSOR.npy is an FP32 [N, C, H, W] tensor, as the model's input expects; each IMAGE is an
encoded image file sent as one element of a BYTES tensor named "image". Prints one JSON object
with what the client decoded, for the test to compare with caliper's JSON path.

Dependencies: scripts/install-test-deps.sh (pip: tritonclient[http], numpy).
"""

import json
import sys

import numpy as np
import tritonclient.http as httpclient

OUTPUTS = ["probabilities", "label", "confidence", "prediction_id", "is_ood"]


def decoded(result, names):
    """The outputs of a result as JSON-able lists, and which came back as binary data."""
    out = {}
    for name in names:
        a = result.as_numpy(name)
        if a is None:
            raise SystemExit(f"output {name} missing from {result.get_response()}")
        if a.dtype == np.object_:
            out[name] = [b.decode() for b in a.reshape(-1)]
        else:
            out[name] = a.tolist()
    response = result.get_response()
    out["binary_outputs"] = sorted(
        o["name"]
        for o in response["outputs"]
        if "binary_data_size" in o.get("parameters", {})
    )
    out["id"] = response.get("id")
    out["parameters"] = response.get("parameters")
    return out


def main():
    url, model, input_name, tensor_path, *images = sys.argv[1:]
    client = httpclient.InferenceServerClient(url=url)
    report = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "server_metadata": client.get_server_metadata(),
        "model_metadata": client.get_model_metadata(model),
    }

    x = np.load(tensor_path).astype(np.float32)
    fp32 = httpclient.InferInput(input_name, list(x.shape), "FP32")
    fp32.set_data_from_numpy(x)
    requested = [httpclient.InferRequestedOutput(n) for n in OUTPUTS]
    result = client.infer(model, [fp32], outputs=requested, request_id="fp32-request")
    report["fp32"] = decoded(result, OUTPUTS)

    encoded = np.array([open(p, "rb").read() for p in images], dtype=np.object_)
    bytes_input = httpclient.InferInput("image", [len(images)], "BYTES")
    bytes_input.set_data_from_numpy(encoded)
    result = client.infer(model, [bytes_input], outputs=requested)
    report["bytes"] = decoded(result, OUTPUTS)

    # No outputs named: the client sets binary_data_output and the server picks the outputs.
    result = client.infer(model, [bytes_input], model_version="1")
    report["bytes_default_outputs"] = decoded(
        result, [o["name"] for o in result.get_response()["outputs"]]
    )

    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
