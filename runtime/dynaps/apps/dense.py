"""A dense neural network on a parameter server: synchronous (bsp) or asynchronous SGD.

An MLP (ReLU hidden layers, softmax output) classifies dense synthetic examples
(:func:`dynaps.apps.synthetic.dense_clusters`: classes made of scattered clusters, which a
linear model cannot separate).  Its weights and biases, flattened into one vector, are cut
into blocks of ``--block`` values; block i is key i of the table ``mlp``, so the parameters
spread over the servers in row blocks.  Every worker needs every parameter, so nothing is
localized (``--allocation`` changes nothing here).

In each step every worker takes its share of one global minibatch (``--batch`` examples
per worker), pulls all parameters, computes its gradient and pushes ``-lr / workers`` times
it (the table's updater adds).  How the steps of different workers interleave is the job's
consistency model (docs/consistency.md):

  bsp    synchronous SGD, two clocks per step: one after computing the gradient (every
         worker read this step's parameters), one after pushing it (every worker's gradient
         is applied).  Each step applies the mean gradient of the global batch to the
         parameters all workers read: the steps of the single-process baseline run with
         ``--batch`` x workers.
  ssp    one clock per step: a pull may miss other workers' last s steps (staleness s).
  async  one clock per step, never a wait: a gradient is applied to whatever parameters are
         there when it arrives (asynchronous SGD, as in ray's parameter-server example).

Under ``dynaps run`` or in a ParameterServerJob, the job's ``spec.consistency`` decides;
started on its own, the app runs a local job with ``--consistency`` (default bsp).

    python -m dynaps.apps.dense                        # a local job: bsp, 1 server, 2 workers
    python -m dynaps.apps.dense --consistency async
    python -m dynaps.apps.dense --baseline --batch 64  # one process, the steps bsp takes
    python -m dynaps.apps.dense --hidden 0             # softmax regression, for comparison
    dynaps run examples/dense.yaml
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from dynaps.apps import common, launching, reporting, synthetic
from dynaps.apps.arguments import non_negative_int, positive_int
from dynaps.contract import ConsistencyModel, TableSpec
from dynaps.errors import UsageError

Floats = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]
Params = list[Floats]  # per layer: weights (fan-in x fan-out), then biases (fan-out)


@dataclass(frozen=True)
class Config:
    allocation: str = "dynamic"
    consistency: str | None = None  # the local job's model (None: bsp); a real job has its own
    staleness: int = 0  # the local job's staleness under ssp
    epochs: int = 8
    batch: int = 32  # examples per worker and step
    lr: float = 0.1
    seed: int = 0
    hidden: tuple[int, ...] = (128,)  # widths of the hidden layers; () is softmax regression
    block: int = 128  # parameters per key: the table's dim
    examples: int = 20_000
    test_examples: int = 4_000
    features: int = 32
    classes: int = 10
    clusters: int = 4  # per class
    latent: int = 4
    report: str | None = None
    quiet: bool = False

    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.features, *self.hidden, self.classes)


class Layout:
    """Where each layer's weights and biases lie in the flat parameter vector, cut into keys."""

    def __init__(self, sizes: tuple[int, ...], block: int) -> None:
        self.shapes: list[tuple[int, ...]] = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            self.shapes += [(fan_in, fan_out), (fan_out,)]
        self.ends = np.cumsum([math.prod(shape) for shape in self.shapes]).tolist()
        self.size = int(self.ends[-1])
        self.block = block
        self.num_keys = -(-self.size // block)
        self.keys = np.arange(self.num_keys, dtype=np.int64)

    def unflatten(self, rows: npt.NDArray[Any]) -> Params:
        """The layers' arrays (views) from the table's rows of ``block`` values."""
        flat = np.asarray(rows, dtype=np.float32).reshape(-1)
        starts = [0, *self.ends[:-1]]
        return [flat[a:b].reshape(s) for a, b, s in zip(starts, self.ends, self.shapes, strict=True)]

    def flatten(self, params: Params) -> Floats:
        """The table's rows: the layers' arrays one after another, zero-padded to whole keys."""
        rows = np.zeros(self.num_keys * self.block, dtype=np.float32)
        rows[: self.size] = np.concatenate([p.reshape(-1) for p in params])
        return rows.reshape(self.num_keys, self.block)

    def initial(self, seed: int) -> Params:
        """He-initialised weights, zero biases."""
        rng = np.random.default_rng([seed, 12])
        return [
            (rng.normal(0.0, np.sqrt(2.0 / s[0]), s) if len(s) == 2 else np.zeros(s)).astype(np.float32)
            for s in self.shapes
        ]


# --------------------------------------------------------------------------- the model


def forward(params: Params, x: Floats) -> list[Floats]:
    """Every layer's output (the input first, the logits last)."""
    outputs = [x]
    layers = len(params) // 2
    for i in range(layers):
        z = outputs[-1] @ params[2 * i] + params[2 * i + 1]
        outputs.append(np.maximum(z, 0) if i < layers - 1 else z)
    return outputs


def _log_softmax(logits: Floats) -> Floats:
    shifted = logits - logits.max(axis=1, keepdims=True)
    out: Floats = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return out


def evaluate(params: Params, x: Floats, y: Labels) -> tuple[float, int]:
    """(summed cross-entropy, correct predictions) over ``x``."""
    logits = forward(params, x)[-1]
    loss = -float(_log_softmax(logits)[np.arange(len(y)), y].astype(np.float64).sum())
    return loss, int((logits.argmax(axis=1) == y).sum())


def gradient(params: Params, x: Floats, y: Labels) -> tuple[float, int, Params]:
    """(summed cross-entropy, correct predictions, gradient of the *mean* cross-entropy)."""
    outputs = forward(params, x)
    log_p = _log_softmax(outputs[-1])
    loss = -float(log_p[np.arange(len(y)), y].astype(np.float64).sum())
    correct = int((log_p.argmax(axis=1) == y).sum())
    delta = np.exp(log_p)
    delta[np.arange(len(y)), y] -= 1.0
    delta /= len(y)
    grads: Params = [np.empty(0, dtype=np.float32)] * len(params)
    for i in range(len(params) // 2 - 1, -1, -1):
        grads[2 * i] = outputs[i].T @ delta
        grads[2 * i + 1] = delta.sum(axis=0)
        if i:
            delta = (delta @ params[2 * i].T) * (outputs[i] > 0)
    return loss, correct, grads


# --------------------------------------------------------------------------- training

_DATA: dict[tuple[int, ...], tuple[Floats, Labels, Floats, Labels]] = {}  # LocalCluster runs reuse it


def load(config: Config) -> tuple[Floats, Labels, Floats, Labels]:
    """(training examples, labels, test examples, labels), the same in every process."""
    c = config
    key = (c.examples, c.test_examples, c.features, c.classes, c.clusters, c.latent, c.seed)
    if key not in _DATA:
        x, y = synthetic.dense_clusters(
            config.examples + config.test_examples,
            config.features,
            config.classes,
            clusters_per_class=config.clusters,
            latent=config.latent,
            seed=config.seed,
        )
        cut = config.examples
        _DATA.clear()
        _DATA[key] = (x[:cut], y[:cut], x[cut:], y[cut:])
    return _DATA[key]


def tables(config: Config) -> dict[str, TableSpec]:
    layout = Layout(config.sizes, config.block)
    return {"mlp": TableSpec(num_keys=layout.num_keys, dim=config.block), **reporting.metrics_table()}


def consistency_of(ps: common.PSLike, config: Config) -> str:
    """The job's consistency model (the baseline, one worker: whatever was asked)."""
    job = getattr(ps, "config", None)
    if job is None:
        return config.consistency or ConsistencyModel.BSP.value
    model = str(job.consistency.model)
    if config.consistency not in (None, model) and ps.rank == 0:
        print(
            f"note: the job runs with consistency {model} (its spec.consistency); "
            f"--consistency {config.consistency} applies to local jobs only",
            file=sys.stderr,
        )
    return model


def train(ps: common.PSLike, config: Config) -> list[dict[str, Any]]:
    """Run the training in this worker; returns every epoch's report (the same on all workers)."""
    x, y, test_x, test_y = load(config)
    layout = Layout(config.sizes, config.block)
    mlp = common.check_table(ps, "mlp", layout.num_keys, config.block)
    progress = reporting.Progress(ps, "dense", config.epochs, config.quiet)
    workers, me = ps.num_workers, ps.rank
    model = consistency_of(ps, config)
    global_batch = workers * config.batch
    steps = len(x) // global_batch
    if steps == 0:
        raise UsageError(f"{len(x)} examples make no step of {workers} workers x --batch {config.batch}")
    progress.note(
        f"MLP {' -> '.join(map(str, config.sizes))}: {layout.size:,} parameters in {layout.num_keys} keys "
        f"of {config.block}; {len(x):,} training and {len(test_x):,} test examples; {workers} workers, "
        f"consistency {model}, {steps} steps of {global_batch} examples per epoch"
    )
    if me == 0:
        mlp.set(layout.keys, layout.flatten(layout.initial(config.seed)))
    ps.barrier()
    scale = np.float32(-config.lr / workers)  # the workers' pushes add up to lr x the mean gradient
    mine_of_test = slice(me * len(test_x) // workers, (me + 1) * len(test_x) // workers)
    for epoch in range(1, config.epochs + 1):
        progress.start_epoch()
        order = np.random.default_rng([config.seed, 13, epoch]).permutation(len(x))
        loss, correct = 0.0, 0
        for step in range(steps):
            first = (step * workers + me) * config.batch  # my share of this step's global batch
            mine = order[first : first + config.batch]
            params = layout.unflatten(mlp.pull(layout.keys))
            step_loss, step_correct, grads = gradient(params, x[mine], y[mine])
            if model == ConsistencyModel.BSP:
                ps.clock()  # every worker has read this step's parameters: now change them
            mlp.push(layout.keys, scale * layout.flatten(grads))
            ps.clock()
            loss, correct = loss + step_loss, correct + step_correct
        seconds, mean_loss = progress.end_epoch(loss, steps * config.batch)
        started = time.perf_counter()
        params = layout.unflatten(mlp.pull(layout.keys))
        test_loss, test_correct = evaluate(params, test_x[mine_of_test], test_y[mine_of_test])
        summed = progress.reducer.sum([test_loss, test_correct, correct])
        quality = {
            "test accuracy": float(summed[1] / len(test_y)),
            "test loss": float(summed[0] / len(test_y)),
        }
        extra = {"train accuracy": float(summed[2] / (steps * global_batch))}
        progress.report(epoch, seconds, mean_loss, quality, time.perf_counter() - started, extra)
        if not np.isfinite(mean_loss):
            raise UsageError(f"training diverged in epoch {epoch} (lr {config.lr:g}): lower --lr")
    progress.write(config.report, asdict(config))
    return [r.to_dict() for r in progress.reports]


# --------------------------------------------------------------------------- command line


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden takes widths like 128 or 256,64, not {text!r}") from None
    if any(w < 0 for w in widths):
        raise argparse.ArgumentTypeError(f"--hidden widths must be positive, not {text!r}")
    return tuple(w for w in widths if w)


def parse(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m dynaps.apps.dense",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    launching.add_common_arguments(parser, epochs=8, batch=32, lr=0.1)
    parser.add_argument(
        "--hidden",
        type=_widths,
        default=(128,),
        help="widths of the hidden layers, comma-separated (default 128; 0: softmax regression)",
    )
    parser.add_argument(
        "--block", type=positive_int, default=128, help="parameters per key = table dim (default 128)"
    )
    parser.add_argument(
        "--consistency",
        choices=[m.value for m in ConsistencyModel],
        help="the local job's consistency model (default bsp); a ParameterServerJob's spec.consistency "
        "decides in a real job",
    )
    parser.add_argument(
        "--staleness",
        type=non_negative_int,
        default=0,
        help="the local job's staleness under ssp (default 0)",
    )
    data = parser.add_argument_group("data", "seeded synthetic classes made of scattered clusters")
    data.add_argument(
        "--examples", type=positive_int, default=20_000, help="training examples (default 20000)"
    )
    data.add_argument(
        "--test-examples", type=non_negative_int, default=4_000, help="held-out examples (default 4000)"
    )
    data.add_argument("--features", type=positive_int, default=32, help="input dimensions (default 32)")
    data.add_argument("--classes", type=positive_int, default=10, help="classes (default 10)")
    data.add_argument("--clusters", type=positive_int, default=4, help="clusters per class (default 4)")
    data.add_argument(
        "--latent", type=positive_int, default=4, help="dimensions the clusters lie in (default 4)"
    )
    launching.add_launch_arguments(parser)
    args = parser.parse_args(argv)
    if args.latent > args.features:
        parser.error("--latent must not exceed --features")
    config = Config(
        allocation=args.allocation,
        consistency=args.consistency,
        staleness=args.staleness,
        epochs=args.epochs,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        hidden=args.hidden,
        block=args.block,
        examples=args.examples,
        test_examples=args.test_examples,
        features=args.features,
        classes=args.classes,
        clusters=args.clusters,
        latent=args.latent,
        report=args.report,
        quiet=args.quiet,
    )
    return config, args


def main(argv: list[str] | None = None) -> int:
    config, args = parse(argv)
    model = config.consistency or ConsistencyModel.BSP.value
    return launching.launch("dense", config, args, consistency=model, staleness=config.staleness)


if __name__ == "__main__":
    sys.exit(main())
