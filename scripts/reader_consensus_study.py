"""What several readers buy: the share of wrong labels after one reader, after two readers with majority consensus
and an adjudicator for their disagreements, and after three readers by majority (plus adjudication of a three-way
split), with simulated oracle readers of a given error rate (wrong answers uniform over the other classes).

Prints a table of numbers (no training; the consensus and adjudication are the product's own functions)::

    python scripts/reader_consensus_study.py --error_rate 0.1 --classes 8 --samples 20000
"""

from __future__ import annotations

import argparse

from alr_monai.relabel.expert import OracleExpert
from alr_monai.relabel.readers import ReaderVote, consensus, reader_agreement


def study(error_rate: float, classes: int, samples: int, seed: int = 0) -> list[tuple[str, float, float, float]]:
    truth = {f"s{i}": i % classes for i in range(samples)}
    ids = list(truth)
    oracle = OracleExpert(truth, classes, error_rate, seed)
    answers = {k: {a.id: a.label for a in oracle.reader(k).answer(ids, 1)} for k in (1, 2, 3, 4)}
    rows = []
    for name, readers in (
        ("1 reader", [1]),
        ("2 readers, majority + adjudicator", [1, 2]),
        ("3 readers, majority + adjudicator", [1, 2, 3]),
    ):
        wrong = adjudicated = 0
        for sample_id in ids:
            votes = [ReaderVote(f"r{k}", answers[k][sample_id]) for k in readers]
            decision = consensus(votes, len(readers), "majority")
            if decision is None:  # the adjudicator (reader 4) settles it
                adjudicated += 1
                decision = answers[4][sample_id]
            wrong += decision != truth[sample_id]
        labels_read = len(readers) * samples + adjudicated
        rows.append((name, wrong / samples, adjudicated / samples, labels_read / samples))
    votes_by_reader = {f"r{k}": {i: ReaderVote(f"r{k}", answers[k][i]) for i in ids} for k in (1, 2)}
    kappa = reader_agreement(votes_by_reader)["kappa"]
    print(f"two readers at error {error_rate:g}: Cohen's kappa {kappa:.3f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--error_rate", type=float, default=0.1)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--samples", type=int, default=20000)
    args = parser.parse_args()
    rows = study(args.error_rate, args.classes, args.samples)
    print("| readers | wrong labels | adjudicated | reads per sample |")
    print("|---|---|---|---|")
    for name, wrong, adjudicated, reads in rows:
        print(f"| {name} | {wrong:.4f} | {adjudicated:.3f} | {reads:.2f} |")


if __name__ == "__main__":
    main()
