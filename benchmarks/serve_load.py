"""Load test of ``transferkit serve`` on loopback against ``transferkit predict`` (issue 31).

Both are whole processes started the same way and timed from launch to the last answer, on the
same images and model:

- ``predict``: ``transferkit predict MODEL FOLDER --csv out.csv`` on the images' folder, with
  an empty ``--cache-dir`` each time, so that it decodes and runs the network on every image as
  the server must (the server keeps no cache: every upload is new to it). ``predict`` keeps
  decoded images and features in its cache, so a second ``predict`` of the same files reads
  them instead of computing; that figure is printed too ("cached predict", after one untimed
  run fills a cache), as the ratio against it, but the bar is judged against the computing one;
- ``serve``: ``transferkit serve MODEL``, then one single-image ``POST /predict`` per image from
  ``--concurrency`` client threads (keep-alive connections), until every image is answered.

The ratio serve/predict of images per second is printed (>= 0.5 is the issue's bar), with the
latency p50/p99, for each ``--delays`` value of ``--max-delay-ms`` (the batching wait) and each
of ``--repeats`` pairs (predict, cached predict, then serve, one after the other: the ratio is
taken within a pair, and its median, lowest and highest over the pairs are printed), and with
``--baseline`` for ``--max-batch-size 1`` (one image per forward pass, as before batching). Then a
soak on one server: ``--soak`` requests with ``--junk`` of them junk uploads (empty, text,
truncated PNG), checking that junk gets 4xx and nothing gets 5xx, and sampling the server's
resident memory (RSS) every 500 requests.

    python benchmarks/serve_load.py --model runs/bench/animals-svm --images runs/bench/data/animals/test \\
        --n 1000 --json runs/bench/serve_load.json

Loopback only; every run is bounded (``--timeout`` per phase).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

CLI = [sys.executable, "-m", "transferkit.cli"]
BOUNDARY = "transferkitbenchboundary"


def multipart(name: str, payload: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + payload + f"\r\n--{BOUNDARY}--\r\n".encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str, port: int, delay_ms: float, batch: int) -> subprocess.Popen:
    command = [*CLI, "serve", model, "--port", str(port), "--max-delay-ms", str(delay_ms), "--max-batch-size", str(batch)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def wait_ready(port: int, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {process.stderr.read().decode()[-2000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("the server did not start in time")


def stop_server(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def hammer(port: int, bodies: list[tuple[str, bytes]], concurrency: int, timeout: float, on_progress=None) -> dict:
    """POST every body once from ``concurrency`` threads; statuses and latencies (s)."""
    lock = threading.Lock()
    cursor = iter(range(len(bodies)))
    statuses, latencies, failures = [None] * len(bodies), [0.0] * len(bodies), []
    done = [0]
    deadline = time.monotonic() + timeout

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < deadline:
            with lock:
                index = next(cursor, None)
            if index is None:
                break
            name, body = bodies[index]
            started = time.perf_counter()
            try:
                connection.request("POST", "/predict?top_k=1", body=body,
                                   headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
                response = connection.getresponse()
                response.read()
                statuses[index] = response.status
            except (OSError, http.client.HTTPException) as error:
                failures.append(f"{name}: {error}")
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            latencies[index] = time.perf_counter() - started
            with lock:
                done[0] += 1
                if on_progress is not None:
                    on_progress(done[0])

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"statuses": statuses, "latencies": latencies, "failures": failures}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def time_predict(model: str, folder: Path, out: Path, cache: Path) -> float:
    """Seconds of one whole ``transferkit predict`` process with ``cache`` as its cache folder."""
    started = time.perf_counter()
    subprocess.run([*CLI, "predict", model, str(folder), "--csv", str(out), "--cache-dir", str(cache)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    return time.perf_counter() - started


def time_serve(model: str, bodies: list[tuple[str, bytes]], concurrency: int, delay_ms: float, batch: int, timeout: float) -> dict:
    port = free_port()
    started = time.perf_counter()
    process = start_server(model, port, delay_ms, batch)
    try:
        wait_ready(port, process, timeout)
        ready = time.perf_counter()
        result = hammer(port, bodies, concurrency, timeout)
        finished = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/model")
        batching = json.loads(connection.getresponse().read())["batching"]
    finally:
        stop_server(process)
    ok = [latency for latency, status in zip(result["latencies"], result["statuses"]) if status == 200]
    return {"delay_ms": delay_ms, "seconds_whole": finished - started, "seconds_start": ready - started,
            "seconds_requests": finished - ready, "answered": len(ok), "failures": result["failures"][:5],
            "forward_passes": batching["batches"], "mean_batch": batching["images"] / max(1, batching["batches"]),
            "p50_ms": 1000 * percentile(ok, 50), "p99_ms": 1000 * percentile(ok, 99),
            "images_per_second_whole": len(ok) / (finished - started), "images_per_second_running": len(ok) / (finished - ready)}


def junk_bodies() -> list[tuple[str, bytes]]:
    png_header = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(40)
    return [("empty.png", multipart("empty.png", b"")), ("notes.txt", multipart("notes.txt", b"not an image at all")),
            ("cut.png", multipart("cut.png", png_header)), ("nofiles", f"--{BOUNDARY}--\r\n".encode())]


def soak(model: str, bodies: list[tuple[str, bytes]], total: int, junk_share: float, concurrency: int, timeout: float) -> dict:
    junk = junk_bodies()
    mixed = []
    for i in range(total):
        if junk_share and i % round(1 / junk_share) == 0:  # every (1/junk_share)-th request is junk
            mixed.append((f"junk:{junk[i % len(junk)][0]}", junk[i % len(junk)][1]))
        else:
            mixed.append(bodies[i % len(bodies)])
    port = free_port()
    process = start_server(model, port, 5.0, 32)
    rss: list[tuple[int, float]] = []
    try:
        wait_ready(port, process, timeout)
        server = [child for child in psutil.Process(process.pid).children(recursive=True)] + [psutil.Process(process.pid)]

        def sample(done: int) -> None:
            if done % 500 == 0:
                rss.append((done, max(p.memory_info().rss for p in server if p.is_running()) / 2**20))

        result = hammer(port, mixed, concurrency, timeout, on_progress=sample)
    finally:
        stop_server(process)
    statuses = result["statuses"]
    is_junk = [name.startswith("junk:") for name, _ in mixed]
    return {
        "requests": total, "junk": sum(is_junk),
        "junk_4xx": sum(1 for j, s in zip(is_junk, statuses) if j and s is not None and 400 <= s < 500),
        "good_200": sum(1 for j, s in zip(is_junk, statuses) if not j and s == 200),
        "5xx": sum(1 for s in statuses if s is not None and s >= 500), "no_answer": sum(1 for s in statuses if s is None),
        "rss_mb": [(done, round(mb, 1)) for done, mb in rss],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model folder (or .onnx file)")
    parser.add_argument("--images", required=True, nargs="+", help="folders of images; the first --n files are used")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--delays", type=float, nargs="+", default=[5.0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--baseline", action="store_true", help="also serve with --max-batch-size 1: one image per forward pass, as before batching")
    parser.add_argument("--repeats", type=int, default=1, help="times predict and each serve setting are run, in pairs")
    parser.add_argument("--soak", type=int, default=5000, help="requests of the soak (0: none)")
    parser.add_argument("--junk", type=float, default=0.1)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    from transferkit.data import find_images

    files = find_images(args.images)[: args.n]
    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    try:
        folder = work / "images"
        folder.mkdir()
        for i, path in enumerate(files):  # one folder of exactly these files for predict
            shutil.copy(path, folder / f"{i:05d}{Path(path).suffix}")
        images = sorted(folder.iterdir())
        bodies = [(p.name, multipart(p.name, p.read_bytes())) for p in images]
        report = {"model": args.model, "images": len(images), "concurrency": args.concurrency, "cpus": os.cpu_count(),
                  "predict": [], "serve": []}
        runs = [(delay, args.batch) for delay in args.delays] + ([(0.0, 1)] if args.baseline else [])
        kept = work / "kept-cache"
        time_predict(args.model, folder, work / "predict.csv", kept)  # untimed: fills the cache that "cached predict" reads
        for repeat in range(args.repeats):  # each repeat times predict (computing, then cached), then every serve setting
            seconds = time_predict(args.model, folder, work / "predict.csv", work / f"empty-cache-{repeat}")
            cached = time_predict(args.model, folder, work / "predict.csv", kept)
            report["predict"].append({"repeat": repeat, "seconds_whole": seconds, "images_per_second": len(images) / seconds,
                                      "cached_seconds_whole": cached, "cached_images_per_second": len(images) / cached})
            print(f"[{repeat + 1}/{args.repeats}] predict: {len(images)} images in {seconds:.1f} s (whole process, empty cache): "
                  f"{len(images) / seconds:.1f} images/s; cached predict {cached:.1f} s: {len(images) / cached:.1f} images/s", flush=True)
            for delay, batch in runs:
                result = time_serve(args.model, bodies, args.concurrency, delay, batch, args.timeout)
                result.update(repeat=repeat, max_batch_size=batch,
                              ratio_whole=result["images_per_second_whole"] / report["predict"][-1]["images_per_second"],
                              ratio_to_cached=result["images_per_second_whole"] / report["predict"][-1]["cached_images_per_second"])
                report["serve"].append(result)
                print(f"[{repeat + 1}/{args.repeats}] serve --max-delay-ms {delay:g} --max-batch-size {batch}: {result['answered']} answered; "
                      f"whole process {result['seconds_whole']:.1f} s ({result['images_per_second_whole']:.1f} images/s, ratio to predict "
                      f"{result['ratio_whole']:.2f}, to cached predict {result['ratio_to_cached']:.2f}); after start-up "
                      f"({result['seconds_start']:.1f} s) {result['images_per_second_running']:.1f} images/s; latency p50 "
                      f"{result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms; {result['forward_passes']} forward passes, "
                      f"{result['mean_batch']:.1f} images each", flush=True)
        for delay, batch in runs:
            rows = [r for r in report["serve"] if r["delay_ms"] == delay and r["max_batch_size"] == batch]
            for key, name in (("ratio_whole", "predict"), ("ratio_to_cached", "cached predict")):
                ratios = [r[key] for r in rows]
                print(f"serve --max-delay-ms {delay:g} --max-batch-size {batch}: ratio to {name} over {len(ratios)} paired runs: "
                      f"median {statistics.median(ratios):.2f}, lowest {min(ratios):.2f}, highest {max(ratios):.2f}", flush=True)
        if args.soak:
            result = soak(args.model, bodies, args.soak, args.junk, args.concurrency, args.timeout)
            report["soak"] = result
            first, last = result["rss_mb"][0][1], result["rss_mb"][-1][1]
            print(f"soak: {result['requests']} requests, {result['junk']} junk -> {result['junk_4xx']} 4xx; good 200: "
                  f"{result['good_200']}; 5xx: {result['5xx']}; unanswered: {result['no_answer']}; RSS MB at "
                  f"{', '.join(f'{d}: {mb:.0f}' for d, mb in result['rss_mb'])} (last/first {last / first:.3f})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
