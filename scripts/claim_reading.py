"""Does the model read the claim? Gold against inverted labels on complementary sentiment claims.

On complementary claims ("This review is positive." / "This review is negative." for one
sentence, exactly one true) the gold labeling and its inversion are equally consistent, so only
mutual predictability can tell them apart. For each wording, this scores both labelings with
leave-one-out prompts (every other claim as a demonstration) and prints, per labeling: the
`chance` objective per claim under centered calibration, and per claim key how well the model's
log-odds rank the claims (AUC against that labeling; 0.5 = no signal). A model that reads the
claim ranks both keys above 0.5 under gold. Gold is read to score only, as in `icm eval`.

    .venv/bin/python scripts/claim_reading.py --sentences 24
"""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from icm_engine.core.config import ModelConfig
from icm_engine.core.scoring import Scorer, normalize, predictability
from icm_engine.data.datasets import load_any
from icm_engine.evaluation.statistics import auroc
from icm_engine.runs.models import load_model

STANDARD = {"positive": "This review is positive.", "negative": "This review is negative."}
LIKED = {"positive": "The reviewer liked it.", "negative": "The reviewer disliked it."}
WORDINGS = {  # name -> (template, label words, claim texts); "task" is the sentiment task as shipped
    "task": ("Review: {text}\nClaim: {claim}\nI think this Claim is", (" False", " True"), STANDARD),
    "yes_no": ("Review: {text}\nClaim: {claim}\nIs the claim right? Answer:", (" No", " Yes"), STANDARD),
    "claim_first": ("Claim: {claim}\nReview: {text}\nThe claim is", (" false", " true"), STANDARD),
    "liked": ("Review: {text}\nClaim: {claim}\nI think this Claim is", (" False", " True"), LIKED),
    "question": ("{claim} Review: {text}\nTrue or false?", (" False", " True"), STANDARD),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="shared:yelp")
    parser.add_argument("--sentences", type=int, default=24, help="sentences (two claims each)")
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--wordings", default=",".join(WORDINGS), help=f"comma list of {', '.join(WORDINGS)}")
    args = parser.parse_args()
    data = load_any(args.data, task="sentiment", limit=args.sentences)
    gold = np.array([int(data.gold[i]) for i in range(len(data.examples))])
    keys = np.array([e.key for e in data.examples])
    backend = load_model(ModelConfig(args.model))
    order = list(range(len(gold)))
    print(f"{len(gold)} claims of {args.sentences} sentences from {args.data}, model {args.model}")
    for name in args.wordings.split(","):
        template, words, claims = WORDINGS[name]
        task = dataclasses.replace(data.task, template=template, label_words=words)
        examples = [dataclasses.replace(e, fields={**e.fields, "claim": claims[e.key]}) for e in data.examples]
        scorer = Scorer(backend, task, examples, calibration="none", use_consistency=False)
        parts = []
        for labeling, labels in (("gold", gold), ("inverted", 1 - gold)):
            evaluation = scorer.evaluate(order, dict(enumerate(labels.tolist())))
            logp = normalize(np.stack([evaluation.raw[i] for i in order]), "centered")
            chance = predictability(logp, labels, "chance") / len(labels)
            odds = logp[:, 1] - logp[:, 0]
            ranks = ", ".join(f"{key} {auroc(odds[keys == key], labels[keys == key]):.2f}" for key in ("positive", "negative"))
            parts.append(f"{labeling}: chance/centered per claim {chance:+.3f}, AUC {ranks}")
        print(f"{name:12s} {' | '.join(parts)}", flush=True)


if __name__ == "__main__":
    main()
