"""Study: per-given-class noise-rate estimators for phase 1, measured against the injected truth.

Two steps, both resumable:

    python scripts/noise_estimate_study.py run      # short phase-1 runs, dumps per epoch (cached in runs/)
    python scripts/noise_estimate_study.py analyse  # offline: every estimator on every dump, tables

``run`` trains the bundle's DEFAULT phase-1 setup (bundles/alr_classification/configs/train.json: two ResNet peers,
co-teaching + VoG, forget rate from the per-class loss mixture at epoch 2) on the embedded long-tailed set, only
shorter (``--epochs``, default 5), for every noise setting and seed. Validation inside the run is skipped until
the last epoch and the test set is never evaluated (the study must not touch it). After each epoch a dump
handler writes, per training sample: the given label, the per-peer logits and penultimate features of an
eval-mode pass without augmentation, the per-sample loss the training pass recorded (what the current estimator
sees), the trusted mask; plus the same eval-mode pass over the validation set. The injected truth is in the
run's noise.csv, which only ``analyse`` reads, and only to SCORE estimators.

``analyse`` runs each candidate estimator on each dump (training data, given labels and validation labels only)
and scores it: global estimate error, per-class mean absolute error, and the precision / min per-class clean
recall of a per-given-class cut of the eval-mode loss ranking at the estimated clean share.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alr_monai.algorithms import noise_estimate as ne  # noqa: E402

SETTINGS = [("symmetric", 0.2), ("symmetric", 0.4), ("symmetric", 0.6), ("pairflip", 0.3)]
SEEDS = [0, 1, 2]


def run_dir_name(kind: str, rate: float, seed: int) -> str:
    return f"{kind}{rate:g}_seed{seed}"


# ---------------------------------------------------------------------------------------------- run


def _eval_pass(network, loader, device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-peer logits (P, N, C) and features (P, N, D) of an eval-mode pass, rows ordered by ``index``."""
    from alr_monai.networks import FeatureTap

    taps = [FeatureTap(peer) for peer in network.peers]
    was_training = network.training
    network.eval()
    logits, features, indices = [], [], []
    try:
        with torch.no_grad():
            for batch in loader:
                images = batch["image"].to(device)
                logits.append(torch.stack([peer(images) for peer in network.peers]).float().cpu())
                features.append(torch.stack([tap.pop() for tap in taps]).float().cpu())
                indices.append(torch.as_tensor(batch["index"]).long())
    finally:
        for tap in taps:
            tap.remove()
        network.train(was_training)
    order = torch.argsort(torch.cat(indices))
    return (
        torch.cat(logits, 1)[:, order].numpy(),
        torch.cat(features, 1)[:, order].numpy(),
        torch.cat(indices)[order].numpy(),
    )


def run_one(kind: str, rate: float, seed: int, out: Path, epochs: int) -> None:
    import warnings

    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow
    from monai.data import DataLoader, Dataset

    from alr_monai.engines.coteaching import CoTeachingEvents

    run_dir = out / run_dir_name(kind, rate, seed)
    if (run_dir / "done.json").is_file():
        print(f"{run_dir.name}: cached", flush=True)
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*resolved to an importable callable.*")
        workflow = ConfigWorkflow(
            # the phase 1 the study measured: the default of its time, now the vog_global preset
            config_file=[
                str(REPO / "bundles" / "alr_classification" / "configs" / "train.json"),
                str(REPO / "configs" / "presets" / "vog_global.json"),
            ],
            workflow_type="train",
            logging_file=False,
            output_dir=str(run_dir),
            seed=seed,
            resume=False,
            max_epochs=epochs,
            val_interval=epochs,  # validation does not touch training; skip it until the end
            run=["$@train#trainer.run()"],  # no test evaluation: the study never looks at the test set
            **{"simulation#noise_rate": rate, "simulation#noise_kind": kind},
        )
        workflow.initialize()
    parser = workflow.parser
    trainer = parser.get_parsed_content("train#trainer")
    network = parser.get_parsed_content("network")
    device = parser.get_parsed_content("device")
    selection = parser.get_parsed_content("selection_tracker")
    estimator = parser.get_parsed_content("noise_rate_estimator")
    eval_transform = parser.get_parsed_content("validate#preprocessing")
    train_loader = DataLoader(
        Dataset(parser.get_parsed_content("train#items"), eval_transform), batch_size=512, shuffle=False
    )
    val_loader = DataLoader(
        Dataset(parser.get_parsed_content("validate#items"), eval_transform), batch_size=512, shuffle=False
    )
    num_samples = len(parser.get_parsed_content("train#items"))
    num_peers = network.num_peers
    num_classes = parser.get_parsed_content("num_classes")
    trainpass_logits = torch.full((num_peers, num_samples, num_classes), float("nan"))

    def record_trainpass(engine) -> None:
        output = engine.state.output
        for k in range(num_peers):
            trainpass_logits[k, output["index"].cpu()] = output["logits"][k].float().cpu()

    def dump(engine) -> None:
        epoch = engine.state.epoch
        t0 = time.time()
        train_logits, train_features, train_index = _eval_pass(network, train_loader, device)
        val_logits, val_features, _ = _eval_pass(network, val_loader, device)
        np.savez_compressed(
            run_dir / f"epoch{epoch}.npz",
            train_logits=train_logits.astype(np.float32),
            train_features=train_features.astype(np.float16),
            train_index=train_index,
            given=selection.labels.numpy(),
            trainpass_loss=selection.mean_loss().numpy(),
            trainpass_logits=trainpass_logits.numpy(),
            trusted=selection.trusted().numpy(),
            val_logits=val_logits.astype(np.float32),
            val_features=val_features.astype(np.float16),
            val_labels=np.asarray(parser.get_parsed_content("data")["val"].labels, dtype=np.int64),
            gmm_estimate=np.float64(-1.0 if estimator.estimate is None else estimator.estimate),
            forget_rate=np.float64(engine.current_forget_rate(epoch - 1)),
        )
        print(f"  {run_dir.name} epoch {epoch}: dumped in {time.time() - t0:.1f} s", flush=True)

    trainer.add_event_handler(CoTeachingEvents.LOSSES_COMPUTED, record_trainpass)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, dump)
    try:
        workflow.run()
    finally:
        workflow.finalize()
    seconds = time.time() - started
    (run_dir / "done.json").write_text(json.dumps({"seconds": seconds, "epochs": epochs}))
    print(f"{run_dir.name}: {seconds:.0f} s", flush=True)


# ---------------------------------------------------------------------------------------------- analyse


def _softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.as_tensor(logits), -1).numpy()


def load_dump(run_dir: Path, epoch: int) -> dict:
    """The dump of one epoch plus the truth (read for scoring only)."""
    from alr_monai.data.noise import NoisyLabels

    dump = dict(np.load(run_dir / f"epoch{epoch}.npz"))
    noise = NoisyLabels.load(run_dir / "noise.csv")
    if not np.array_equal(noise.noisy_labels, dump["given"]):
        raise ValueError(f"{run_dir}: given labels in the dump differ from noise.csv")
    dump["true"] = noise.true_labels
    return dump


def cut_by_estimate(scores: np.ndarray, given: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Keep, in each given class, the round(n_c * (1 - rate_c)) samples of lowest score."""
    keep = np.zeros(len(given), dtype=bool)
    for c, rate in enumerate(rates):
        members = np.flatnonzero(given == c)
        n_keep = int(round(len(members) * (1.0 - float(rate))))
        keep[members[np.argsort(scores[members], kind="stable")[:n_keep]]] = True
    return keep


def selection_scores(keep: np.ndarray, given: np.ndarray, true: np.ndarray, num_classes: int) -> tuple[float, float]:
    clean = given == true
    precision = float(clean[keep].mean()) if keep.any() else math.nan
    recalls = [float(keep[clean & (true == c)].mean()) for c in range(num_classes) if (clean & (true == c)).any()]
    return precision, min(recalls)


def estimators(dump: dict, num_classes: int) -> dict[str, np.ndarray]:
    """Every candidate: name -> per-given-class noise-rate estimate (C,). Truth is NOT passed in."""
    given = torch.as_tensor(dump["given"])
    val_labels = torch.as_tensor(dump["val_labels"])
    train_probs = torch.as_tensor(_softmax(dump["train_logits"]).mean(0))
    val_probs = torch.as_tensor(_softmax(dump["val_logits"]).mean(0))
    train_feats = torch.as_tensor(dump["train_features"].astype(np.float32))
    val_feats = torch.as_tensor(dump["val_features"].astype(np.float32))
    trainpass_loss = torch.as_tensor(dump["trainpass_loss"])
    eval_loss = -torch.log(train_probs.gather(1, given[:, None]).squeeze(1).clamp_min(1e-12))
    out: dict[str, np.ndarray] = {}

    def gmm_rates(losses: torch.Tensor, per_class: bool) -> np.ndarray:
        clean = ne.gmm_clean_probability(losses, given, num_classes, per_class=per_class)
        return np.array([1.0 - float(clean[given == c].mean()) for c in range(num_classes)])

    out["a_gmm_trainloss"] = gmm_rates(trainpass_loss, True)  # the current default
    out["a_gmm_evalloss"] = gmm_rates(eval_loss, True)
    out["e_gmm_pooled_trainloss"] = gmm_rates(trainpass_loss, False)
    for name, func in _candidate_functions().items():
        out[name] = func(
            train_probs=train_probs,
            given=given,
            val_probs=val_probs,
            val_labels=val_labels,
            train_feats=train_feats,
            val_feats=val_feats,
            train_loss=trainpass_loss,
            eval_loss=eval_loss,
            num_classes=num_classes,
        )
    # (g) combination: two estimators that share the identity but not the statistic (softmax vs features)
    out["g_mean_c_soft_d_matching"] = (out["c_confusion_soft"] + out["d_prototype_matching"]) / 2.0
    return out


def _prototype_gmm(train_feats, given, val_feats, val_labels, num_classes) -> np.ndarray:
    """(d) per-class 2-GMM over cosine distance to the class's validation prototype (RoLT-style)."""
    tf = torch.nn.functional.normalize(train_feats, dim=-1)
    vf = torch.nn.functional.normalize(val_feats, dim=-1)
    if tf.ndim == 3:  # peers: average the per-peer distances
        protos = torch.stack([vf[:, val_labels == c].mean(1) for c in range(num_classes)], 1)  # (P, C, D)
        protos = torch.nn.functional.normalize(protos, dim=-1)
        dist = 1 - (tf * protos[:, given]).sum(-1).mean(0)
    else:
        protos = torch.nn.functional.normalize(
            torch.stack([vf[val_labels == c].mean(0) for c in range(num_classes)]), dim=-1
        )
        dist = 1 - (tf * protos[given]).sum(-1)
    clean = ne.gmm_clean_probability(dist.float(), given, num_classes, per_class=True)
    return np.array([1.0 - float(clean[given == c].mean()) for c in range(num_classes)])


def _gmm_fallback(losses, given, num_classes, min_separation: float = 2.0) -> np.ndarray:
    """(e) per-class loss GMM; a class whose two components do not separate (Ashman's D < 2) takes the
    pooled mixture's posteriors instead."""
    from sklearn.mixture import GaussianMixture

    values = losses.double().numpy()
    g = given.numpy()
    pooled = ne.gmm_clean_probability(losses, per_class=False).numpy()
    rates = np.zeros(num_classes)
    for c in range(num_classes):
        x = values[g == c]
        norm = ((x - x.min()) / max(x.max() - x.min(), 1e-12)).reshape(-1, 1)
        gmm = GaussianMixture(2, max_iter=100, tol=1e-2, reg_covar=5e-4, random_state=0).fit(norm)
        m, v = gmm.means_.ravel(), gmm.covariances_.ravel()
        ashman = math.sqrt(2) * abs(m[0] - m[1]) / math.sqrt(v[0] + v[1])
        if ashman >= min_separation:
            clean = gmm.predict_proba(norm)[:, int(np.argmin(m))]
        else:
            clean = pooled[g == c]
        rates[c] = 1.0 - clean.mean()
    return rates


def _val_mpe(train_probs, given, val_probs, val_labels, num_classes, min_tail: float = 0.5) -> np.ndarray:
    """(f) mixture-proportion estimate with the validation class as the known clean component: clean share =
    min over upper tails A (holding >= min_tail of the clean class) of P_train(A | given i) / P_val(A | y = i)."""
    rates = np.zeros(num_classes)
    for c in range(num_classes):
        s_train = train_probs[given == c, c].numpy()
        s_val = np.sort(val_probs[val_labels == c, c].numpy())
        ratios = []
        for q in np.linspace(min_tail, 0.95, 10):
            t = s_val[int((1 - q) * len(s_val))]
            ratios.append((s_train >= t).mean() / max((s_val >= t).mean(), 1e-12))
        rates[c] = 1.0 - min(1.0, min(ratios))
    return rates


def _cleanlab_noisy_thresholds(train_probs, given, num_classes) -> np.ndarray:
    """cleanlab's own thresholds (mean probability over samples GIVEN the label), for contrast with (b)."""
    return ne.confident_joint_val_rates(
        train_probs, given, train_probs, given, num_classes, min_val_per_class=1
    ).numpy()


def _candidate_functions() -> dict:
    """Candidates adapted to one call signature (library functions and study-only ones)."""
    return {
        "b_confident_joint_val": lambda **k: ne.confident_joint_val_rates(
            k["train_probs"], k["given"], k["val_probs"], k["val_labels"], k["num_classes"]
        ).numpy(),
        "b_cleanlab_noisy_thresholds": lambda **k: _cleanlab_noisy_thresholds(
            k["train_probs"], k["given"], k["num_classes"]
        ),
        "c_confusion_soft": lambda **k: ne.confusion_inversion_rates(
            k["train_probs"], k["given"], k["val_probs"], k["val_labels"], k["num_classes"], soft=True
        ).numpy(),
        "c_confusion_hard": lambda **k: ne.confusion_inversion_rates(
            k["train_probs"], k["given"], k["val_probs"], k["val_labels"], k["num_classes"], soft=False
        ).numpy(),
        "d_prototype_gmm": lambda **k: _prototype_gmm(
            k["train_feats"], k["given"], k["val_feats"], k["val_labels"], k["num_classes"]
        ),
        "d_prototype_matching": lambda **k: ne.prototype_matching_rates(
            k["train_feats"], k["given"], k["val_feats"], k["val_labels"], k["num_classes"]
        ).numpy(),
        "e_gmm_fallback": lambda **k: _gmm_fallback(k["train_loss"], k["given"], k["num_classes"]),
        "f_val_mpe": lambda **k: _val_mpe(
            k["train_probs"], k["given"], k["val_probs"], k["val_labels"], k["num_classes"]
        ),
    }


def analyse(out: Path, epochs: list[int], doc_table: Path | None) -> None:
    rows = []
    for kind, rate in SETTINGS:
        for seed in SEEDS:
            run_dir = out / run_dir_name(kind, rate, seed)
            for epoch in epochs:
                if not (run_dir / f"epoch{epoch}.npz").is_file():
                    continue
                dump = load_dump(run_dir, epoch)
                given, true = dump["given"], dump["true"]
                num_classes = dump["train_logits"].shape[-1]
                counts = np.bincount(given, minlength=num_classes)
                truth = np.array([float((true[given == c] != c).mean()) for c in range(num_classes)])
                eval_probs = _softmax(dump["train_logits"]).mean(0)
                eval_loss = -np.log(np.clip(eval_probs[np.arange(len(given)), given], 1e-12, None))
                proto_dist = _prototype_distance(dump, num_classes)
                cands = estimators(dump, num_classes)
                cands["z_oracle_truth"] = truth  # the headroom: cut at the true clean share
                for name, rates in cands.items():
                    rates = np.clip(np.nan_to_num(rates, nan=0.0), 0.0, 1.0)
                    keep = cut_by_estimate(eval_loss, given, rates)
                    precision, min_recall = selection_scores(keep, given, true, num_classes)
                    keep_proto = cut_by_estimate(proto_dist, given, rates)
                    proto_precision, proto_min_recall = selection_scores(keep_proto, given, true, num_classes)
                    rows.append(
                        {
                            "kind": kind,
                            "rate": rate,
                            "seed": seed,
                            "epoch": epoch,
                            "estimator": name,
                            "global_err": float(
                                (rates * counts).sum() / counts.sum() - (truth * counts).sum() / counts.sum()
                            ),
                            "class_mae": float(np.abs(rates - truth).mean()),
                            "class_max_err": float(np.abs(rates - truth).max()),
                            "precision": precision,
                            "min_recall": min_recall,
                            "proto_precision": proto_precision,
                            "proto_min_recall": proto_min_recall,
                            "rates": [round(float(r), 3) for r in rates],
                            "truth": [round(float(t), 3) for t in truth],
                        }
                    )
    (out / "analysis.json").write_text(json.dumps(rows, indent=1))
    table = summary_table(rows)
    print(table)
    if doc_table is not None:
        doc_table.write_text(table + "\n")


def _prototype_distance(dump: dict, num_classes: int) -> np.ndarray:
    """Cosine distance of each training sample's (peer-concatenated, normalised) feature to the VALIDATION
    prototype of its given class: the RoLT-style ranking score, as an alternative to the loss ranking."""

    def flatten(features: np.ndarray) -> torch.Tensor:
        f = torch.nn.functional.normalize(torch.as_tensor(features.astype(np.float32)), dim=-1)
        return torch.nn.functional.normalize(torch.cat(list(f), dim=-1), dim=-1)

    train, val = flatten(dump["train_features"]), flatten(dump["val_features"])
    val_labels = torch.as_tensor(dump["val_labels"])
    protos = torch.nn.functional.normalize(
        torch.stack([val[val_labels == c].mean(0) for c in range(num_classes)]), dim=-1
    )
    return (1.0 - (train * protos[torch.as_tensor(dump["given"])]).sum(-1)).numpy()


def _ms(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):+.3f} ± {std:.3f}" if False else f"{np.mean(values):.3f} ± {std:.3f}"


def summary_table(rows: list[dict]) -> str:
    lines = []
    epochs = sorted({r["epoch"] for r in rows})
    names = sorted({r["estimator"] for r in rows})
    for epoch in epochs:
        lines.append(f"\n### estimate after epoch {epoch}\n")
        lines.append(
            "| noise | estimator | global est. - truth | per-class MAE | max per-class error | precision | min clean recall "
            "| precision (prototype ranking) | min clean recall (prototype ranking) |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for kind, rate in SETTINGS:
            for name in names:
                sel = [
                    r
                    for r in rows
                    if r["epoch"] == epoch and r["kind"] == kind and r["rate"] == rate and r["estimator"] == name
                ]
                if not sel:
                    continue
                glob = [r["global_err"] for r in sel]
                std = float(np.std(glob, ddof=1)) if len(glob) > 1 else 0.0
                lines.append(
                    f"| {kind} {rate:g} | {name} | {np.mean(glob):+.3f} ± {std:.3f} | {_ms([r['class_mae'] for r in sel])} "
                    f"| {_ms([r['class_max_err'] for r in sel])} | {_ms([r['precision'] for r in sel])} "
                    f"| {_ms([r['min_recall'] for r in sel])} | {_ms([r['proto_precision'] for r in sel])} "
                    f"| {_ms([r['proto_min_recall'] for r in sel])} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["run", "analyse"])
    parser.add_argument("--out", default=str(REPO / "runs" / "noise_study"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--analyse_epochs", default="1,2,3,5")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table", default=None, help="also write the markdown summary table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.step == "run":
        started = time.time()
        for kind, rate in SETTINGS:
            for seed in SEEDS:
                run_one(kind, rate, seed, out, args.epochs)
        print(f"all runs: {time.time() - started:.0f} s", flush=True)
    else:
        analyse(out, [int(e) for e in args.analyse_epochs.split(",")], Path(args.table) if args.table else None)


if __name__ == "__main__":
    main()
