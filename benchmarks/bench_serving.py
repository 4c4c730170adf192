"""Serving speed of a registered model, on the CPU: what `embed` and `search` cost a call, one way and the other.

A small world is prepared, sharded, trained for a few steps (the default model: same encoders, heads, feature
models as params.yaml, which is what a call costs) and registered in a temporary SQLite store. Then:

1. `load`: `mlflow.pyfunc.load_model("models:/<name>@champion")` (package, feature models);
2. `pyfunc`: single-row text predictions through the loaded pyfunc, calls/s;
3. `serve`: single-row text requests to `mlflow models serve` over HTTP on 127.0.0.1, calls/s (server start-up and
   model loading not timed);
4. `search-once`: `multigeometry search --query TEXT` as a new process per query (model load + index reuse), s/call;
5. `search-loop`: `multigeometry search --query -` with the queries on standard input (model and index loaded once),
   queries/s over the whole process (load included) and per query after the first.

Usage: python benchmarks/bench_serving.py [--items 48] [--calls 50] [--epochs 2]
Prints a Markdown table and a JSON line with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
QUERIES = ["a small red circle", "a blue square", "a green triangle left of a yellow star", "a shape",
           "a purple elephant playing the violin"]


def setup(folder: Path, items: int, epochs: int) -> Path:
    """params.yaml of a small world with the default model, run through the six stages; returns the params file."""
    tree = yaml.safe_load((REPO / "params.yaml").read_text())
    tree["data"]["world"].update(n_items=items, workers=1)
    tree["shard"].update(workers=1, max_samples=32)
    tree["loader"].update(batch_size=16)
    tree["train"].update(epochs=epochs, val_every=1000, checkpoint_every=1000,
                         tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    tree["registry"].update(model_name="bench-serving")
    params_file = folder / "params.yaml"
    params_file.write_text(yaml.safe_dump(tree, sort_keys=False))
    from multigeometry.config import load_params
    from multigeometry.stages import evaluate, prepare, register, shard, train, validate

    params = load_params(params_file)
    for stage in (prepare.prepare, validate.validate, shard.shard, train.train, evaluate.evaluate, register.register):
        stage(params, folder)
    return params_file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_pyfunc(uri: str, calls: int) -> dict[str, float]:
    import mlflow
    import pandas as pd

    started = time.perf_counter()
    model = mlflow.pyfunc.load_model(uri)
    load_s = time.perf_counter() - started
    model.predict(pd.DataFrame({"text": [QUERIES[0]]}))  # warm-up
    started = time.perf_counter()
    for i in range(calls):
        model.predict(pd.DataFrame({"text": [QUERIES[i % len(QUERIES)]]}))
    return {"load_s": load_s, "pyfunc_calls_per_s": calls / (time.perf_counter() - started)}


def bench_serve(uri: str, tracking_uri: str, calls: int, folder: Path) -> float:
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    with open(folder / "serve.log", "w") as log:
        proc = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
                                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 600
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/ping", timeout=2):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        text = (folder / "serve.log").read_text()
                        raise RuntimeError(f"mlflow models serve did not start:\n{text}") from None
                    time.sleep(0.5)

            def call(text: str) -> None:
                body = json.dumps({"dataframe_split": {"columns": ["text"], "data": [[text]]}}).encode()
                request = urllib.request.Request(f"{url}/invocations", data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=120) as response:
                    response.read()

            call(QUERIES[0])  # warm-up
            started = time.perf_counter()
            for i in range(calls):
                call(QUERIES[i % len(QUERIES)])
            return calls / (time.perf_counter() - started)
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=60)


def bench_search(params_file: Path, folder: Path, calls: int) -> dict[str, float]:
    base = [str(BIN / "multigeometry"), "search", "--params", str(params_file), "--model",
            "models:/bench-serving@champion", "--index", str(folder / "index"), "-k", "3", "--json"]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run([*base, "--query", QUERIES[0]], cwd=folder, env=env, check=True, capture_output=True)  # the index
    once = []
    for text in QUERIES[:3]:
        started = time.perf_counter()
        subprocess.run([*base, "--query", text], cwd=folder, env=env, check=True, capture_output=True)
        once.append(time.perf_counter() - started)
    lines = "\n".join(QUERIES[i % len(QUERIES)] for i in range(calls)) + "\n"
    started = time.perf_counter()
    proc = subprocess.Popen([*base, "--query", "-"], cwd=folder, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(QUERIES[0] + "\n")
    proc.stdin.flush()
    no_match = json.loads(proc.stdout.readline())  # the first answer: model and index loaded
    first_s = time.perf_counter() - started
    out, _ = proc.communicate(lines)
    total_s = time.perf_counter() - started
    answers = out.strip().splitlines()
    assert len(answers) == calls, f"{len(answers)} answers to {calls} queries"
    elephant = [json.loads(a) for i, a in enumerate(answers) if QUERIES[i % len(QUERIES)].startswith("a purple")][0]
    return {"search_once_s_per_call": sum(once) / len(once), "search_loop_first_answer_s": first_s,
            "search_loop_queries_per_s": calls / (total_s - first_s),
            "no_match_red_circle": any(r["no_match"] for r in no_match),
            "no_match_purple_elephant": any(r["no_match"] for r in elephant)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        folder = Path(tmp)
        params_file = setup(folder, args.items, args.epochs)
        tracking = f"sqlite:///{folder / 'mlflow.db'}"
        import mlflow

        mlflow.set_tracking_uri(tracking)
        mlflow.set_registry_uri(tracking)
        uri = "models:/bench-serving@champion"
        results: dict[str, object] = dict(bench_pyfunc(uri, args.calls))
        results["serve_calls_per_s"] = bench_serve(uri, tracking, args.calls, folder)
        results.update(bench_search(params_file, folder, args.calls))
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
               "load_avg_end": [round(x, 2) for x in os.getloadavg()]}
    print(f"command: python benchmarks/bench_serving.py --items {args.items} --epochs {args.epochs} "
          f"--calls {args.calls}")
    print(f"machine: {json.dumps(machine)}")
    print("| what | figure |\n| --- | --- |")
    print(f"| load the pyfunc (`mlflow.pyfunc.load_model`) | {results['load_s']:.1f} s |")
    print(f"| pyfunc `predict`, one text a call, in process | {results['pyfunc_calls_per_s']:.1f} calls/s |")
    print(f"| `mlflow models serve`, one text a request over HTTP | {results['serve_calls_per_s']:.1f} calls/s |")
    print(f"| `multigeometry search --query TEXT`, a new process a query | "
          f"{results['search_once_s_per_call']:.1f} s/call |")
    print(f"| `multigeometry search --query -`, first answer (load + index) | "
          f"{results['search_loop_first_answer_s']:.1f} s |")
    print(f"| `multigeometry search --query -`, then | {results['search_loop_queries_per_s']:.1f} queries/s |")
    print(f"| no_match flagged: 'a small red circle' / 'a purple elephant playing the violin' | "
          f"{results['no_match_red_circle']} / {results['no_match_purple_elephant']} |")
    print(json.dumps({"results": results, "machine": machine}))


if __name__ == "__main__":
    main()
