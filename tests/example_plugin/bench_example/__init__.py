"""An example third-party plugin: what a pip package needs to add a generator and a logger to bench."""

import json

from harness import hookimpl


@hookimpl
def register_generators(register):
    register("class-mean", "bench_example.generator:ClassMean")


@hookimpl
def on_generation_end(seed, generation, record, run_dir):
    logs = run_dir / "logs"
    logs.mkdir(exist_ok=True)
    accs = {name: m["acc"] for name, m in record["classifiers"].items()}
    with open(logs / "example.jsonl", "a") as fh:
        fh.write(json.dumps({"seed": seed, "generation": generation, "acc": accs}) + "\n")
