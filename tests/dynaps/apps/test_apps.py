"""Every app learns on small synthetic data in the single-process baseline, and its CLI helps.

The baseline runs exactly the training code the distributed runs use, so these tests
check the algorithms; tests/dynaps/apps/test_apps_cluster.py checks them on real processes.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from dynaps.apps import arguments, dense, kge, lr, mf, reporting, synthetic, w2v
from dynaps.apps.inprocess import InProcessPS
from dynaps.contract import ParameterServerJob, TableSpec
from dynaps.errors import UsageError

EXAMPLES = Path(__file__).parents[3] / "examples"

TINY_MF = mf.Config(
    rows=300, cols=300, rank=4, entries=20_000, test_entries=1_000, epochs=6, batch=200, quiet=True
)
TINY_KGE = kge.Config(entities=300, relations=4, triples=6_000, dim=8, epochs=6, batch=128, quiet=True)
TINY_W2V = w2v.Config(vocabulary=300, tokens=30_000, dim=16, epochs=2, quiet=True)
TINY_LR = lr.Config(examples=5_000, features=500, epochs=2, quiet=True)
TINY_DENSE = dense.Config(
    examples=4_000, test_examples=1_000, hidden=(64,), block=32, epochs=4, batch=16, quiet=True
)


def baseline(module: Any, config: Any) -> list[dict[str, Any]]:
    reports: list[dict[str, Any]] = module.train(InProcessPS(module.tables(config)), config)
    return reports


def test_mf_reaches_the_noise_level() -> None:
    reports = baseline(mf, TINY_MF)
    first, last = reports[0]["quality"]["test RMSE"], reports[-1]["quality"]["test RMSE"]
    assert last < 0.2 < first  # values have unit variance, noise 0.1
    assert reports[-1]["local_share"] == 1.0
    assert all(r["keys_per_second"] > 0 for r in reports)


def test_mf_bold_driver_grows_the_step_while_the_loss_falls() -> None:
    reports = baseline(mf, TINY_MF)
    rates = [r["extra"]["lr"] for r in reports]
    assert rates[1] == pytest.approx(rates[0] * 1.05)
    assert mf.bold_driver(0.1, loss=2.0, previous=1.0) == pytest.approx(0.05)
    assert mf.bold_driver(0.1, loss=1.0, previous=2.0) == pytest.approx(0.105)


def test_mf_says_when_it_diverges() -> None:
    with pytest.raises(UsageError, match=r"diverged in epoch 1 .* lower --lr"):
        baseline(mf, mf.Config(**{**TINY_MF.__dict__, "lr": 50.0, "epochs": 2}))


def test_mf_one_entry_per_step_takes_the_minibatch_codes_steps() -> None:
    """``--batch 1`` has a loop of its own (numpy's fixed costs): the same SGD steps as the
    minibatch code with minibatches of one, up to float32 rounding."""
    config = mf.Config(rows=50, cols=40, rank=6, quiet=True)
    rng = np.random.default_rng(3)
    i, j = rng.integers(0, 50, 2_000), rng.integers(0, 40, 2_000)
    v = rng.normal(size=2_000).astype(np.float32)
    start = rng.normal(0, 0.3, (50 + 40, 6)).astype(np.float32)
    results = []
    for one_loop in (True, False):
        ps = InProcessPS(mf.tables(config))
        rows, cols = ps.table("rows"), ps.table("cols")
        rows.values[:], cols.values[:] = start[:50], start[50:]
        if one_loop:
            squared = mf._sgd_entries(rows, cols, i, j, v, 0.01, -0.05)
        else:
            squared = mf._sgd_steps(rows, cols, i, j, v, 1, np.float32(0.01), np.float32(-0.05))
        results.append((squared, rows.values.copy(), cols.values.copy()))
    (squared, rows_one, cols_one), (expected, rows_batch, cols_batch) = results
    assert not np.allclose(rows_one, start[:50], atol=1e-3)  # it trained
    assert squared == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(rows_one, rows_batch, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(cols_one, cols_batch, rtol=1e-4, atol=1e-6)


def test_mf_with_one_entry_per_step_learns_and_reports_divergence() -> None:
    one = mf.Config(**{**TINY_MF.__dict__, "batch": 1, "epochs": 2})
    reports = baseline(mf, one)
    assert reports[-1]["quality"]["test RMSE"] < reports[0]["quality"]["test RMSE"]
    with pytest.raises(UsageError, match=r"diverged in epoch 1 .* lower --lr"):
        baseline(mf, mf.Config(**{**one.__dict__, "lr": 50.0}))


def test_kge_learns_the_planted_structure() -> None:
    reports = baseline(kge, TINY_KGE)
    # random ranking among 300 entities gives MRR of about 0.02
    assert reports[-1]["quality"]["MRR"] > 0.2
    assert reports[-1]["quality"]["Hits@10"] > reports[-1]["quality"]["Hits@1"]


def test_rescal_trains_too() -> None:
    reports = baseline(kge, kge.Config(**{**TINY_KGE.__dict__, "model": "rescal", "epochs": 2}))
    assert reports[-1]["loss"] < reports[0]["loss"]


def test_w2v_finds_planted_synonyms_and_topics() -> None:
    quality = baseline(w2v, TINY_W2V)[-1]["quality"]
    assert quality["synonym@1"] > 0.5
    assert quality["topic P@10"] > 0.5  # random: 1 / 20 topics


def test_lr_beats_chance() -> None:
    reports = baseline(lr, TINY_LR)
    assert reports[-1]["quality"]["AUC"] > 0.6
    assert reports[-1]["loss"] < np.log(2)


def test_dense_mlp_learns_what_softmax_regression_cannot() -> None:
    mlp = baseline(dense, TINY_DENSE)
    linear = baseline(dense, dense.Config(**{**TINY_DENSE.__dict__, "hidden": ()}))
    accuracy = [r["quality"]["test accuracy"] for r in mlp]
    assert accuracy[-1] > accuracy[0]
    assert accuracy[-1] > 0.6  # 10 classes: chance is 0.1
    assert linear[-1]["quality"]["test accuracy"] < accuracy[-1] - 0.2
    assert mlp[-1]["loss"] < mlp[0]["loss"]


def test_dense_gradient_matches_finite_differences() -> None:
    layout = dense.Layout((5, 4, 3), block=7)
    params = layout.initial(seed=3)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 5)).astype(np.float32), rng.integers(0, 3, 6)
    params64 = [p.astype(np.float64) for p in params]
    _, _, grads = dense.gradient(params64, x.astype(np.float64), y)  # type: ignore[arg-type]
    for layer, grad in enumerate(grads):
        for index in list(np.ndindex(grad.shape))[:5]:
            bumped = [p.copy() for p in params64]
            bumped[layer][index] += 1e-6
            up = dense.evaluate(bumped, x.astype(np.float64), y)[0]  # type: ignore[arg-type]
            bumped[layer][index] -= 2e-6
            down = dense.evaluate(bumped, x.astype(np.float64), y)[0]  # type: ignore[arg-type]
            assert grad[index] == pytest.approx((up - down) / 2e-6 / len(y), abs=1e-6)
    # the table's rows hold every parameter once, in whole keys of ``block``
    rows = layout.flatten(params)
    assert rows.shape == (layout.num_keys, 7) == (-(-(5 * 4 + 4 + 4 * 3 + 3) // 7), 7)
    for a, b in zip(layout.unflatten(rows), params, strict=True):
        np.testing.assert_array_equal(a, b)


def test_dense_refuses_a_batch_larger_than_the_data() -> None:
    with pytest.raises(UsageError, match="make no step"):
        baseline(dense, dense.Config(**{**TINY_DENSE.__dict__, "batch": 10_000}))


@pytest.mark.parametrize(
    ("app", "files"),
    [
        ("mf", ["--train", "train.mtx", "--test", "test.mtx", "--rank", "4"]),
        ("kge", ["--train", "train.tsv", "--valid", "valid.tsv", "--test", "test.tsv", "--dim", "4"]),
        ("w2v", ["--corpus", "corpus.txt", "--dim", "8"]),
        ("lr", ["--train", "train.libsvm", "--test", "test.libsvm"]),
    ],
)
def test_apps_train_from_files_written_by_the_generator(
    app: str, files: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    synthetic.main([app, str(tmp_path), "--size", "3000", "--keys", "300"])
    args = [str(tmp_path / f) if "." in f else f for f in files]
    module = {"mf": mf, "kge": kge, "w2v": w2v, "lr": lr}[app]
    assert module.main([*args, "--epochs", "1", "--baseline"]) == 0
    out = capsys.readouterr().out
    assert f"[{app}] epoch 1/1" in out
    assert "local 100.0%" in out


def test_reducer_sums_rotating_slots() -> None:
    ps = InProcessPS(reporting.metrics_table())
    reducer = reporting.Reducer(ps)
    for n in range(7):  # more calls than slots: every slot is zeroed before reuse
        assert reducer.sum([n, 1.5]).tolist() == [n, 1.5]
    with pytest.raises(UsageError, match="at most"):
        reducer.sum(np.zeros(reporting.METRICS_DIM + 1))


def test_wrong_table_shape_names_the_fix() -> None:
    tables = {**mf.tables(TINY_MF), "rows": mf.tables(TINY_MF)["rows"].model_copy(update={"dim": 3})}
    with pytest.raises(UsageError, match="numKeys >= 300, dim = 4"):
        mf.train(InProcessPS(tables), TINY_MF)


def test_hot_words_are_the_head_expected_in_every_minibatch() -> None:
    config = w2v.Config(batch=512, window=3, neg=5)
    zipf = 1e6 / np.arange(1, 50_001)  # a large vocabulary: only its head is in every minibatch
    hot = w2v.hot_words_expected(zipf, config)
    assert 100 < len(hot) < 10_000
    assert hot.tolist() == list(range(len(hot)))  # the most frequent words, and only they
    share, noise = zipf / zipf.sum(), zipf**0.75 / (zipf**0.75).sum()
    expected = 512 * (share * 7 + 30 * noise)  # centre + 6 contexts, 6 x 5 negatives
    assert expected[len(hot) - 1] >= 0.5 > expected[len(hot)]
    small = w2v.load(TINY_W2V)[0].counts.astype(np.float64)  # 300 words: all of them
    assert len(w2v.hot_words_expected(small, TINY_W2V)) == 300
    assert len(w2v.hot_words_expected(zipf, dataclasses.replace(config, batch=8))) < len(hot)
    # most of the vocabulary hot (8,364 of 12,000 expected every other minibatch): every word,
    # as the few left would still cost a round of messages in nearly every minibatch
    most = 1e6 / np.arange(1, 12_001)
    assert len(w2v.hot_words_expected(most, config)) == 12_000


@pytest.mark.parametrize(("module", "config", "name"), [(w2v, TINY_W2V, "words"), (lr, TINY_LR, "weights")])
def test_a_gradient_app_refuses_a_table_that_adds(module: Any, config: Any, name: str) -> None:
    # pushed gradients added onto the values climb the loss: a manifest without the updater
    tables = module.tables(config)
    tables[name] = tables[name].model_copy(update={"updater": TableSpec(num_keys=1, dim=1).updater})
    with pytest.raises(UsageError, match=rf"table '{name}' adds what is pushed .* \{{kind: adagrad"):
        module.train(InProcessPS(tables), config)


def test_a_job_whose_tables_step_with_another_lr_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    # a job's tables (the manifest) set the step; the app's --lr only builds its own tables
    config = dataclasses.replace(TINY_LR, epochs=1)
    tables = lr.tables(dataclasses.replace(config, lr=0.3))
    lr.train(InProcessPS(tables), config)
    said = capsys.readouterr().err
    assert "table 'weights' steps with its updater's lr 0.3 (the job's tables), not --lr" in said
    lr.train(InProcessPS(lr.tables(config)), config)
    assert "steps with its updater's lr" not in capsys.readouterr().err


@pytest.mark.parametrize("module", [mf, kge, w2v, lr, dense])
def test_help_describes_the_app(module: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--allocation {dynamic,static}" in out
    assert "dynaps run examples/" in out


@pytest.mark.parametrize("app", ["mf", "kge", "w2v", "lr", "dense"])
def test_example_manifest_declares_the_tables_its_arguments_need(app: str) -> None:
    doc = yaml.safe_load((EXAMPLES / f"{app}.yaml").read_text())
    job = ParameterServerJob.model_validate(doc)
    assert job.spec.workers.command == ["python", "-m", f"dynaps.apps.{app}"]
    module = {"mf": mf, "kge": kge, "w2v": w2v, "lr": lr, "dense": dense}[app]
    config, _ = module.parse(job.spec.workers.args)
    needed = module.tables(config)
    declared = {t.name: t for t in job.spec.tables}
    assert set(declared) == set(needed)
    for name, spec in needed.items():
        got = declared[name]
        assert (got.num_keys, got.dim, got.dtype) == (spec.num_keys, spec.dim, spec.dtype), name
        assert (got.updater.kind, got.updater.lr) == (spec.updater.kind, spec.updater.lr), name


def test_epoch_hooks_mark_each_epoch_between_its_barriers() -> None:
    """bench/cpu_scaling.py reads every process's CPU at these marks: each epoch must be
    marked once as it starts and once as it ends, in order, in every app that reports."""
    for module, config in ((mf, dataclasses.replace(TINY_MF, epochs=3)), (kge, TINY_KGE)):
        marks: list[tuple[str, int]] = []

        def mark(phase: str, epoch: int, marks: list[tuple[str, int]] = marks) -> None:
            marks.append((phase, epoch))

        reporting.EPOCH_HOOKS.append(mark)
        try:
            reports = baseline(module, config)
        finally:
            reporting.EPOCH_HOOKS.clear()
        assert marks == [(phase, e) for e in range(1, len(reports) + 1) for phase in ("start", "end")]


def test_kge_ranks_after_every_nth_epoch_and_the_last() -> None:
    config = dataclasses.replace(TINY_KGE, epochs=5, eval_every=2)
    reports = baseline(kge, config)
    ranked = [r["epoch"] for r in reports if "MRR" in r["quality"]]
    assert ranked == [2, 4, 5]
    assert all(r["eval_seconds"] == 0.0 for r in reports if r["epoch"] not in ranked)
    every = baseline(kge, dataclasses.replace(config, eval_every=1))
    assert every[-1]["quality"] == reports[-1]["quality"]  # the same training, ranked less often
    assert kge.parse(["--eval-every", "3"])[0].eval_every == 3


def test_kge_scores_large_graphs_in_chunks_with_the_same_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    # 256 queries against 5 million float32 entities would be 5 GB of scores at once
    assert kge.queries_per_chunk(5_000_000, 4) == 3
    assert kge.queries_per_chunk(5_000, 4) == kge.MAX_QUERIES_PER_CHUNK
    assert kge.queries_per_chunk(10**12, 8) == 1
    config = dataclasses.replace(TINY_KGE, epochs=1)
    whole = baseline(kge, config)[-1]["quality"]
    monkeypatch.setattr(kge, "SCORE_BYTES", 7 * config.entities * 4)  # 7 queries at a time
    assert kge.queries_per_chunk(config.entities, 4) == 7
    chunked = baseline(kge, config)[-1]["quality"]
    assert chunked == pytest.approx(whole, rel=1e-12)
    assert whole["MRR"] > 0
    # and against slices of 37 entities (the last one shorter): no worker holds the whole table
    monkeypatch.setattr(kge, "ENTITY_ROWS", 37)
    monkeypatch.setattr(kge, "SCORE_BYTES", 5 * 37 * 4)  # 5 queries at a time
    assert config.entities % 37
    sliced = baseline(kge, config)[-1]["quality"]
    assert sliced == pytest.approx(whole, rel=1e-12)


CHECKED_TYPES: dict[object, str] = {
    arguments.positive_int: "0",
    arguments.non_negative_int: "-1",
    arguments.positive_float: "0",
    arguments.non_negative_float: "-1",
    arguments.sync_ms: "0",
}


def parser_of(module: Any, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The app's own parser, as its ``parse`` builds it (caught at its parse_args)."""
    caught: list[argparse.ArgumentParser] = []
    real = argparse.ArgumentParser.parse_args

    def catch(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None) -> Any:
        caught.append(self)
        return real(self, [], namespace)

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", catch)
        module.parse([])
    return caught[0]


@pytest.mark.parametrize("module", [mf, kge, w2v, lr, dense])
def test_every_number_an_app_takes_is_checked_where_it_is_parsed(
    module: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A count of 0 or a negative step size was a traceback from deep in the training (53
    of them over the five apps): now argparse's one line naming the option, exit code 2."""
    parser = parser_of(module, monkeypatch)
    numeric = [a for a in parser._actions if a.option_strings and a.type is not None]
    assert numeric, "the app takes numbers"
    for action in numeric:
        assert action.type not in (int, float), f"{action.option_strings[0]} takes an unchecked number"
        bad = CHECKED_TYPES.get(action.type)
        if bad is None:  # an app's own parser (dense --hidden, kge --hot-keys)
            continue
        option = action.option_strings[0]
        with pytest.raises(SystemExit) as exit_info:
            module.parse([option, bad])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"error: argument {option}: " in err
        assert "Traceback" not in err


def test_an_app_says_which_data_file_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "missing.mtx")
    assert mf.main(["--train", missing, "--test", missing, "--baseline"]) == 2
    err = capsys.readouterr().err
    assert err == f"python -m dynaps.apps.mf: error: cannot read {missing}: No such file or directory\n"
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    assert w2v.main(["--corpus", str(tmp_path / "latin1.txt"), "--baseline"]) == 2
    assert "latin1.txt: not utf-8 text (invalid continuation byte at byte 3)" in capsys.readouterr().err


def test_an_app_whose_training_diverges_says_so_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    tiny = ["--rows", "300", "--cols", "300", "--rank", "4", "--entries", "20000", "--test-entries", "100"]
    assert mf.main([*tiny, "--lr", "50", "--epochs", "2", "--baseline", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m dynaps.apps.mf: error: matrix factorisation diverged in epoch 1")
    assert "Traceback" not in err


def test_the_generator_says_what_it_cannot_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a-file").write_text("")
    assert synthetic.main(["kge", str(tmp_path / "a-file")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m dynaps.apps.synthetic: error: [Errno 17] File exists")
    assert synthetic.main(["w2v", str(tmp_path / "corpus"), "--keys", "5"]) == 2
    assert "needs a vocabulary of 100 words or more, got 5" in capsys.readouterr().err
