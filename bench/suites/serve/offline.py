"""The offline side of the serve suite, run from the tree: `graft.load(run).predict_proba` on the
served inputs in batches, on each engine named, with N torch threads; a row per engine.

    python -m bench.suites.serve.offline RUN INPUTS.json [--batch 32] [--threads 2] \
        [--engines torch onnxruntime]

INPUTS.json: a list of image paths or of texts. Each engine predicts the first batch once (loading,
export and race), then all inputs in one call (`inputs_per_s`: the offline figure), then the same
inputs a call per batch (`batch_calls_inputs_per_s`: what a server can do, since it cannot sort
texts by length across requests that have not arrived), both timed.
"""

from __future__ import annotations

import argparse
import json
import time

from bench.harness import emit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run")
    parser.add_argument("inputs")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engines", nargs="+", default=["torch", "onnxruntime"])
    args = parser.parse_args()
    import torch

    import graft

    torch.set_num_threads(args.threads)
    with open(args.inputs) as listed:
        inputs = json.load(listed)
    for engine in args.engines:
        model = graft.load(args.run, engine=engine)
        model.predict_proba(inputs[: args.batch], batch_size=args.batch)
        started = time.perf_counter()
        model.predict_proba(inputs, batch_size=args.batch)
        seconds = time.perf_counter() - started
        started = time.perf_counter()
        for first in range(0, len(inputs), args.batch):
            model.predict_proba(inputs[first : first + args.batch], batch_size=args.batch)
        batch_calls = time.perf_counter() - started
        choice = getattr(model, "engine_choice", None) or {"name": "torch"}
        rate, call_rate = round(len(inputs) / seconds, 2), round(len(inputs) / batch_calls, 2)
        emit({"engine": engine, "ran_on": choice.get("name"), "inputs": len(inputs),
              "inputs_per_s": rate, "batch_calls_inputs_per_s": call_rate,
              "precision": model.precision.name})  # fmt: skip


if __name__ == "__main__":
    main()
