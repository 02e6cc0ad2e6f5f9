#!/usr/bin/env python3
"""Turns the raw outputs of scripts/bench-serve.sh (runs/bench/) into one JSON line on stdout and
docs/BENCHMARKS.md. Standard library only.

Usage: bench_report.py OUT_DIR CONNS MODEL_DIR IMAGE DURATION [PIN [SECTION]]
"""
import json, os, platform, re, subprocess, sys, datetime, pathlib
out, conns, model_dir, image, duration = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
pinned = len(sys.argv) > 6 and sys.argv[6] == "1"
section = sys.argv[7] if len(sys.argv) > 7 else ""
root = out.parent.parent

def wrk(path, strict=True):
    """Requests/s, {percentile: ms}, the number of failed requests (timeouts, errors), requests."""
    text = (out / path).read_text()
    failed = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    failed += sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", text))
    if strict and failed:
        raise SystemExit(f"{path}: caliper failed {failed} requests:\n{text}")
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    lat = {p: float(v) * unit[u] for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)}
    total = int(re.search(r"(\d+) requests in", text).group(1))
    return float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)), lat, failed, total

raw = json.loads((out / "raw.json").read_text())
# The raw loop ran before and after the server (bench-serve.sh): rates, CPU times and latencies
# are the mean of the two, the drift between them is reported (after / before - 1).
if (out / "raw-after.json").exists():
    after = json.loads((out / "raw-after.json").read_text())
    counts = ("batch_size", "sessions", "intra_op_threads", "raw_single_samples", "raw_single_gap_us")
    drift = {f"raw_drift_{k[4:]}": round(after[k] / raw[k] - 1, 3)
             for k in ("raw_decode_ort_cpu_us", "raw_pipeline_cpu_us") if raw.get(k) and after.get(k)}
    raw = {k: (v + after[k]) / 2 if k not in counts and isinstance(v, (int, float)) and k in after else v
           for k, v in raw.items()}
    raw.update(drift)
s64, _, _, s64_n = wrk(f"server-wrk-{conns}.txt")
_, s1, _, _ = wrk("server-wrk-1.txt")
# The baseline is measured as it is: its timeouts (wrk's 2 s limit) are reported, not fatal.
p64, _, p64_failed, p64_n = wrk(f"python-wrk-{conns}.txt", strict=False)
_, p1, _, _ = wrk("python-wrk-1.txt", strict=False)
kb = lambda f: int((out / f).read_text().split()[0])
# CPU time (all threads) per request during the many-client run.
cpu_per_req = lambda name, n: round(int((out / f"{name}-cpu-us.txt").read_text().split()[0]) / n, 1)
server_cpu = cpu_per_req("server", s64_n)
m = re.search(r'caliper_batch_size_sum\{model="[^"]+"\} ([\d.e+]+)\s+caliper_batch_size_count\{model="[^"]+"\} (\d+)',
              (out / "server-metrics.txt").read_text())
res = {
    "model": model_dir, "image": image, "concurrency": int(conns), "duration_s": int(duration),
    **raw,
    "server_images_per_s": s64,
    "server_mean_batch": round(float(m.group(1)) / int(m.group(2)), 2) if m else None,
    "server_p50_ms_1client": s1["50"], "server_p99_ms_1client": s1["99"],
    "server_p50_overhead_ms": round(s1["50"] - raw["raw_single_p50_ms"], 3),
    "server_cpu_us_per_request": server_cpu,
    "server_rss_mb_under_load": round(kb("server-rss-kb.txt") / 1024, 1),
    "server_peak_rss_mb": round(kb("server-hwm-kb.txt") / 1024, 1),
    "python_images_per_s": p64, "python_failed_requests": p64_failed, "python_p50_ms_1client": p1["50"], "python_p99_ms_1client": p1["99"],
    "python_cpu_us_per_request": cpu_per_req("python", p64_n),
    "python_rss_mb_under_load": round(kb("python-rss-kb.txt") / 1024, 1),
    "server_vs_raw_ratio": round(s64 / raw["raw_decode_ort_images_per_s"], 3),
    "server_vs_raw_ort_only_ratio": round(s64 / raw["raw_ort_images_per_s"], 3),
    "server_vs_raw_cpu_ratio": round(raw["raw_decode_ort_cpu_us"] / server_cpu, 3),
    "server_vs_python_ratio": round(s64 / p64, 2),
}
# Batched uploads (multipart and V2 BYTES of `batched` images per request): CPU per image,
# against the CPU per image of the many-client single-image runs around them.
# Both sides are per image the server ran (`*-images-run.txt`): when wrk stops, the requests in
# flight are cut off with some of their images run, about one upload's worth (EfficientNet-Lite0:
# 1.2% of a run's CPU), which a figure per answered image would charge to the answered ones.
def cpu_per_image(name, answered):
    images = int((out / f"{name}-images-run.txt").read_text().split()[0])
    return round(int((out / f"{name}-cpu-us.txt").read_text().split()[0]) / images, 1), images - answered


batched_file = out / "batched-images.txt"
if batched_file.exists():
    # bench-serve.sh's order: the main run, then per round multipart, single, V2, single; each
    # batched run divided by the mean of the single runs on either side.
    n_img = int(batched_file.read_text())
    rounds = int((out / "batched-rounds.txt").read_text())
    singles = [cpu_per_image("server", s64_n)[0]]
    for k in range(1, 2 * rounds + 1):
        _, _, _, n = wrk(f"server-single-{k}-wrk.txt")
        singles.append(cpu_per_image(f"server-single-{k}", n)[0])
    res["server_cpu_us_per_request_after_batched"] = cpu_per_req(f"server-single-{2 * rounds}", n)
    res["server_cpu_us_per_image_single_rounds"] = singles
    for kind, first in (("multipart", 0), ("v2", 1)):
        per_image, ratios, cut_off = [], [], 0
        for r in range(1, rounds + 1):
            _, _, _, n_req = wrk(f"server-{kind}-{r}-wrk.txt")
            cpu, cut = cpu_per_image(f"server-{kind}-{r}", n_req * n_img)
            around = singles[2 * (r - 1) + first:][:2]
            per_image.append(cpu)
            ratios.append(round(cpu / (sum(around) / 2), 3))
            cut_off += cut
        res[f"server_cpu_us_per_image_{kind}{n_img}"] = round(sum(per_image) / rounds, 1)
        res[f"{kind}{n_img}_cut_off_images"] = cut_off
        res[f"{kind}{n_img}_vs_single_cpu_rounds"] = ratios
        res[f"{kind}{n_img}_vs_single_cpu_ratio"] = round(sum(ratios) / rounds, 3)
# The HTTP floor (examples/bench_http_floor.rs under the same load): what any server on this
# stack pays per request before doing anything; absent in runs from before it was measured.
if (out / f"floor-wrk-{conns}.txt").exists():
    _, f1, _, _ = wrk("floor-wrk-1.txt")
    f64, _, _, f64_n = wrk(f"floor-wrk-{conns}.txt")
    res["http_floor_requests_per_s"] = f64
    res["http_floor_cpu_us_per_request"] = cpu_per_req("floor", f64_n)
    res["http_floor_p50_ms_1client"] = f1["50"]
    res["server_cpu_beyond_raw_and_http_us"] = round(
        server_cpu - raw["raw_decode_ort_cpu_us"] - res["http_floor_cpu_us_per_request"], 1)
# The raw pipeline (decode + ONNX Runtime + every answer's own work, no server): what serving
# adds beyond it, and the lowest ratios any server giving the same answers could reach.
if "raw_pipeline_cpu_us" in raw:
    pipe = raw["raw_pipeline_cpu_us"]
    # Timed around the answers alone when bench_raw reports it; else the difference of two loops,
    # which moves with the machine's drift between them (15.8-34.9 us for ResNet-20's ~22).
    answer = raw.get("raw_answer_cpu_us", pipe - raw["raw_decode_ort_cpu_us"])
    res["answer_cpu_us_per_image"] = round(answer, 1)
    res["server_cpu_beyond_pipeline_us"] = round(server_cpu - pipe, 1)
    if "http_floor_cpu_us_per_request" in res:
        res["server_cpu_beyond_pipeline_and_http_us"] = round(
            server_cpu - pipe - res["http_floor_cpu_us_per_request"], 1)
    res["server_vs_pipeline_cpu_ratio"] = round(pipe / server_cpu, 3)
    res["server_vs_pipeline_ratio"] = round(s64 / raw["raw_pipeline_images_per_s"], 3)
    res["server_p50_minus_pipeline_ms"] = round(s1["50"] - raw["raw_pipeline_single_p50_ms"], 3)
# The load generator's CPU per request of the many-client runs: wrk shares the cores with the
# server, so a server's throughput here is at most cores / (its CPU + wrk's) per request.
def loadgen_seconds(f):
    """User + system seconds of a `time`d wrk run (bash's TIMEFORMAT='%U %S'), or None."""
    if not f.exists():
        return None
    times = re.findall(r"^([\d.]+) ([\d.]+)$", f.read_text(), re.M)
    return float(times[-1][0]) + float(times[-1][1]) if times else None
def loadgen_cpu(name, n):
    seconds = loadgen_seconds(out / f"{name}-loadgen-cpu-s.txt")
    return None if seconds is None else round(seconds * 1e6 / n, 1)
res["load_generator_cpu_us_per_request"] = loadgen_cpu("server", s64_n)
# The floor at the server's own request rate (bench-serve.sh's co-run section): each answer held
# back by a timer, so that every answer wakes a parked worker as a model's results do, in three
# rounds beside the raw pipeline loop on the same cores, each round after the loop alone.
# Absent in runs from before it was measured.
paced = sorted(out.glob(f"paced-wrk-{conns}-*.txt"))
if paced:
    runs = [wrk(p.name) for p in paced]
    n_paced = sum(r[3] for r in runs)
    res["http_floor_at_server_rate_requests_per_s"] = round(sum(r[0] for r in runs) / len(runs), 1)
    cpu_rounds = [int(l) for l in (out / "paced-cpu-us.txt").read_text().split()]
    res["http_floor_at_server_rate_cpu_us_per_request"] = round(sum(cpu_rounds) / n_paced, 1)
    wrk_s = [loadgen_seconds(out / p.name.replace(f"paced-wrk-{conns}-", "paced-loadgen-cpu-s-")) for p in paced]
    if None not in wrk_s:
        res["load_generator_at_server_rate_cpu_us_per_request"] = round(sum(wrk_s) * 1e6 / n_paced, 1)
    pipeline_cpu = lambda kind: [json.loads(f.read_text())["raw_pipeline_cpu_us"]
                                 for f in sorted(out.glob(f"corun-{kind}-*.json"))]
    beside, alone = pipeline_cpu("raw"), pipeline_cpu("alone")
    res["corun_pipeline_cpu_us"] = round(sum(beside) / len(beside), 1)
    res["corun_alone_pipeline_cpu_us"] = round(sum(alone) / len(alone), 1)
    res["corun_pipeline_vs_alone_rounds"] = [round(b / a, 3) for b, a in zip(beside, alone)]
    res["corun_pipeline_vs_alone_ratio"] = round(sum(beside) / sum(alone), 3)
# The ceiling: a server whose serving costs nothing beyond the HTTP floor (at the server's own
# request rate when measured), giving the same answers (the raw pipeline's work, at what it costs
# on cores shared with serving when measured), on these cores beside the same load generator.
# What it reaches is the most any server on this stack could in this run; a target it misses is
# out of reach here.
floor_cpu = res.get("http_floor_at_server_rate_cpu_us_per_request", res.get("http_floor_cpu_us_per_request"))
if "raw_pipeline_cpu_us" in raw and floor_cpu is not None:
    res["ceiling_http_floor_cpu_us"] = floor_cpu
    shared = res.get("corun_pipeline_vs_alone_ratio", 1.0)
    res["ceiling_shared_cores_factor"] = shared
    ceiling_cpu = (raw["raw_decode_ort_cpu_us"] + res["answer_cpu_us_per_image"]) * shared + floor_cpu
    res["ceiling_cpu_us_per_request"] = round(ceiling_cpu, 1)
    res["ceiling_cpu_overhead_us"] = round(ceiling_cpu - raw["raw_decode_ort_cpu_us"], 1)
    res["ceiling_vs_raw_cpu_ratio"] = round(raw["raw_decode_ort_cpu_us"] / ceiling_cpu, 3)
    # A lone client's next request comes a round trip after the last answer: the pipeline after
    # that idle gap when measured (bench-serve.sh's co-run section), against the back-to-back raw
    # p50 of the same process; older runs: the pipeline back to back.
    gap_file = out / "gap-single.json"
    if gap_file.exists():
        gap = json.loads(gap_file.read_text())
        res["raw_single_gap_us"] = gap["raw_single_gap_us"]
        res["raw_pipeline_single_gap_p50_ms"] = round(gap["raw_pipeline_single_gap_p50_ms"], 4)
        p50_minus_raw = gap["raw_pipeline_single_gap_p50_ms"] - gap["raw_single_p50_ms"]
    else:
        p50_minus_raw = raw["raw_pipeline_single_p50_ms"] - raw["raw_single_p50_ms"]
    res["ceiling_p50_minus_raw_ms"] = round(p50_minus_raw + res["http_floor_p50_ms_1client"], 3)
    wrk_cpu = res["load_generator_cpu_us_per_request"]
    if wrk_cpu is not None and not pinned:
        ceiling = round(min(raw["raw_decode_ort_images_per_s"], os.cpu_count() * 1e6 / (ceiling_cpu + wrk_cpu)), 1)
        res["ceiling_images_per_s"] = ceiling
        res["ceiling_vs_raw_ratio"] = round(ceiling / raw["raw_decode_ort_images_per_s"], 3)
        res["ceiling_vs_python_ratio"] = round(ceiling / p64, 2)
        res["server_vs_ceiling_ratio"] = round(s64 / ceiling, 3)
    res["server_vs_ceiling_cpu_ratio"] = round(ceiling_cpu / server_cpu, 3)
    res["server_cpu_beyond_ceiling_us"] = round(server_cpu - ceiling_cpu, 1)
# Where the server's CPU goes: its session threads (ONNX Runtime runs, named caliper-MODEL-N)
# against the rest (the async workers and the blocking pool: HTTP, decode, the answer; threads
# that exited during the run count here too), per request of the many-client run. Against the
# raw loop's ONNX Runtime alone, the session threads say whether the runs themselves got slower.
threads = [out / f"server-threads-{i}.txt" for i in (0, 1)]
if all(t.exists() for t in threads):
    before, after = ({l.split()[0]: l.split() for l in t.read_text().splitlines() if l.strip()} for t in threads)
    session_us = sum(int(row[2]) - int(before.get(tid, [0, 0, 0])[2])
                     for tid, row in after.items() if row[1].startswith("caliper-") and row[1] != "caliper-http")
    res["server_session_threads_cpu_us_per_request"] = round(session_us / s64_n, 1)
    res["server_other_threads_cpu_us_per_request"] = round(server_cpu - session_us / s64_n, 1)
    res["session_threads_vs_raw_ort_cpu_ratio"] = round(session_us / s64_n / raw["raw_ort_cpu_us"], 3)
# Issue 19's targets, from the figures above (whether each applies depends on the model).
res["server_cpu_overhead_us"] = round(server_cpu - raw["raw_decode_ort_cpu_us"], 1)
res["server_p50_minus_raw_ms"] = round(s1["50"] - raw["raw_single_p50_ms"], 3)
res["server_vs_python_p50_ratio"] = round(s1["50"] / p1["50"], 3)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
machine = f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"
date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
rows = "\n".join(f"| `{k}` | {v} |" for k, v in res.items())
title = "Inference server, pinned: load generator on CPU 0, everything else on CPU 1" if pinned else \
    "Inference server: caliper serve vs raw ONNX Runtime vs Python"
if section:
    title += f" ({model_dir})"
loadgen = (f"wrk 4.1 pinned to CPU 0 (1 thread, {conns} connections; then 1 connection); the server,\n"
           "  the raw baseline and the Python server pinned to CPU 1, one session each (`PIN=1`)") if pinned else \
    (f"wrk 4.1 (2 threads, {conns} connections; then 1 thread, 1 connection), on the\n"
     "  same machine as the server, so it competes with the server for the same cores")
doc = f"""## {title}

Generated by `scripts/bench-serve.sh` (rerun it to refresh this file; raw outputs land in
`runs/{out.name}/`). Not a timed test.

- Date: {date}
- Machine: {machine}
- Command: `{"PIN=1 " if pinned else ""}{f"SECTION={section} " if section else ""}DURATION={duration} CONNS={conns} BATCH={raw['batch_size']} SESSIONS={raw['sessions']} INTRA={raw['intra_op_threads']} scripts/bench-serve.sh {model_dir} {image}`
- Load generator: {loadgen}.

### What each figure means

- `raw_ort_images_per_s`: ONNX Runtime alone, in process, batches of `batch_size`, one thread per
  session as the server runs them. `raw_decode_ort_images_per_s`: the same plus PNG decoding and
  preprocessing of every image (the work the server must also do). `raw_single_p50_ms`: one image
  decoded and run on one thread, no batching. Sessions fetch the features output too when
  model.toml names one, as the server's do.
- `server_images_per_s`: `caliper serve` with {conns} concurrent clients each posting the PNG
  (`POST /v1/models/NAME/predict`), full JSON response with calibrated probabilities and OOD scores.
  `server_vs_raw_ratio` = server / raw decode + ONNX Runtime (target >= 0.9).
- `server_p50_ms_1client`: latency seen by a single client; `server_p50_overhead_ms` = that minus
  the raw single-image latency (target <= 1 ms).
- `python_*`: a plain Python server (standard library HTTP server + onnxruntime + Pillow,
  `scripts/bench_python_server.py`) under the same load; `server_vs_python_ratio` (target >= 3).
- RSS: resident memory sampled half-way through the {conns}-client run, and the peak.
- The raw loop runs twice, before and after the server; every `raw_*` rate, CPU time and latency
  is the mean of the two runs, and `raw_drift_decode_ort_cpu_us` (and `..._pipeline_...`) is the
  second over the first, minus 1: how far the machine's speed moved meanwhile.
- CPU: `raw_decode_ort_cpu_us` is the CPU time per image of decode + ONNX Runtime (the bench
  threads' own run time); `server_cpu_us_per_request` the CPU time of all the server's threads
  during the {conns}-client run divided by the requests answered (HTTP, decode, ONNX Runtime,
  calibration, OOD scores, signed id, JSON, metrics). `server_vs_raw_cpu_ratio` = raw / server:
  the share of the server's CPU that is the unavoidable work. Unlike the throughput ratios it
  is not inflated by other processes or by the load generator. `server_cpu_overhead_us` =
  server CPU per request - raw decode + ONNX Runtime CPU per image.
- Batched uploads: `server_cpu_us_per_image_multipartN` and `..._v2N` are the server's CPU per
  image for requests of N images each (multipart/form-data to `/v1/models/NAME/predict`, and a V2
  BYTES tensor of N encoded images to `/v2/models/NAME/infer`), 8 clients; `multipartN_vs_single_cpu_ratio`
  divides it by the CPU per single image of the runs on either side of it. The batched runs
  alternate with single-image runs (the run above, then per round multipart, single, V2,
  single; `BATCHED_ROUNDS`, default 2), since the machine's speed drifts between runs by more
  than an upload saves on a large model: `multipartN_vs_single_cpu_rounds` has each round's
  ratio and the ratio is their mean, `server_cpu_us_per_image_single_rounds` the single runs,
  `server_cpu_us_per_request_after_batched` the last (per request). Both sides are per image the server ran (its
  `caliper_batch_size` histogram's sum): when wrk stops it cuts off the requests in flight, some
  of whose images have run (`multipartN_cut_off_images`, about one upload's worth), and a figure
  per answered image would charge their CPU to the answered ones (1.2% on EfficientNet-Lite0).
- HTTP floor: `http_floor_*` are the same {conns}-client and 1-client runs against
  `examples/bench_http_floor.rs`, tokio + hyper + axum answering the server's response bytes
  with no work: what serving over HTTP on this stack costs. `server_cpu_beyond_raw_and_http_us`
  = server CPU per request - raw decode + ONNX Runtime - the floor: caliper's own work
  (calibration, the OOD scores, conformal sets, the monitor, ids, JSON) and its thread hand-offs.
- Raw pipeline: `raw_pipeline_*` run decode + ONNX Runtime as above and then build each image's
  whole answer in process, with the server's own library calls and no server: calibration, the
  top-k, every OOD score, abstention and the conformal set, the signed prediction id, the JSON
  bytes. `answer_cpu_us_per_image` is the answer's own work, which the raw reference leaves out:
  `raw_answer_cpu_us`, the pipeline threads' CPU time around the answers alone (older runs:
  pipeline - raw decode + ONNX Runtime, which moves with the drift between the two loops). `server_cpu_beyond_pipeline_us` (and `..._and_http_us`,
  less the HTTP floor) is what serving adds to it: HTTP, queueing, thread hand-offs, metrics.
  `server_vs_pipeline_cpu_ratio` = pipeline / server CPU per request; `server_vs_pipeline_ratio`
  by throughput; `server_p50_minus_pipeline_ms` = the 1-client p50 - the pipeline's single-image
  p50. A batched upload still pays the pipeline for every image (the server runs it in batches
  of `batch_size`, as here), so `server_vs_pipeline_cpu_ratio` is also the floor under
  `multipartN_vs_single_cpu_ratio` for any server giving the same answers.
- Floor at the server's rate: `http_floor_at_server_rate_*` are the floor again with each
  answer held back by a timer (`FLOOR_DELAY_US`, no CPU), so that {conns} clients ask at about the
  server's own request rate: at 150k requests/s one wake-up of the runtime serves many answers, at
  a model's few thousand every batch of answers wakes a parked worker, as the session threads'
  results do. It runs in three rounds beside the raw pipeline loop on the same cores under the
  same load, each round right after the loop alone: `corun_pipeline_cpu_us` against
  `corun_alone_pipeline_cpu_us` (`corun_pipeline_vs_alone_ratio`, and by round) is what the same
  decode, runs and answers cost on cores shared with serving and the clients (preemptions, caches),
  measured seconds apart so that the machine's drift stays out of it.
- Ceiling: `load_generator_cpu_us_per_request` is wrk's own CPU time (user + system) per request
  of the {conns}-client run against the server: on a machine shared with its clients a server
  serves at most cores / (its CPU + the clients') requests per second. `ceiling_*` are the
  figures of a server that adds nothing to the raw pipeline but the HTTP floor at its rate
  (`ceiling_http_floor_cpu_us`; the full-speed floor in runs from before that was measured), on
  these cores beside the same load generator: CPU per request = (raw decode + ONNX Runtime + the
  answer) x `ceiling_shared_cores_factor` (= `corun_pipeline_vs_alone_ratio`; 1 in older runs) +
  that floor (`ceiling_cpu_overhead_us` over raw decode + ONNX Runtime,
  `ceiling_vs_raw_cpu_ratio`), images/s = the lower of raw decode + ONNX Runtime's and cores x
  1e6 / (that CPU + wrk's) (`ceiling_vs_raw_ratio`, `ceiling_vs_python_ratio`), and the 1-client
  p50 = the pipeline's single-image p50 after an idle gap of the floor's 1-client p50
  (`raw_pipeline_single_gap_p50_ms`, `raw_single_gap_us`: a lone client's next request comes one
  round trip after the last answer, so the run starts on a core idle that long; older runs: back
  to back) + the floor's p50, over the back-to-back raw p50 of the same process
  (`ceiling_p50_minus_raw_ms`). A target the ceiling misses cannot be met by a server on this
  stack giving the same answers in that run; `server_vs_ceiling_ratio`,
  `server_vs_ceiling_cpu_ratio` and `server_cpu_beyond_ceiling_us` are how close caliper comes.
- Thread split: `server_session_threads_cpu_us_per_request` is the CPU of the session threads
  (ONNX Runtime runs, copying a batch in and the logits out) per request of the {conns}-client
  run, `server_other_threads_cpu_us_per_request` the rest (async workers and blocking pool: HTTP,
  decode, the answer, and runs a request made inline on its own task when the model was idle).
  `session_threads_vs_raw_ort_cpu_ratio` = session threads / `raw_ort_cpu_us`: above 1, the
  server's runs cost more than the raw loop's.

### Results

| figure | value |
| --- | --- |
{rows}
"""
# Replace only this script's section of the shared file (other benchmarks live there too).
path = root / "docs" / "BENCHMARKS.md"
tag = ("serve-bench-pinned" if pinned else "serve-bench") + (f"-{section}" if section else "")
start, end = f"<!-- {tag}:start (written by scripts/bench-serve.sh) -->", f"<!-- {tag}:end -->"
section = f"{start}\n{doc.rstrip()}\n{end}\n"
old = path.read_text() if path.exists() else "# Benchmarks\n"
if start in old and end in old:
    new = old[: old.index(start)] + section + old[old.index(end) + len(end) + 1 :]
else:
    new = old.rstrip() + "\n\n" + section
path.write_text(new)
print(json.dumps(res))
