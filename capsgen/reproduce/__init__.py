"""``capsgen reproduce EXPERIMENT``: a paper's experiments end to end, into one report folder.

Each experiment trains its models, evaluates them and writes ``report.md`` / ``report.html``
beside the papers' own numbers. Stages are resumable: a finished stage's result is kept in the
folder's ``results.json``, so running the same command again after an interruption continues
where it stopped instead of starting over.
"""
from __future__ import annotations

EXPERIMENTS = {
    "capsulegan": ("capsgen.reproduce.capsulegan", "DCGAN vs CapsuleGAN (BCE, paper 000) vs CapsuleGAN "
                   "(margin loss, paper 001): sample metrics, GAM battle, semi-supervised Label Spreading"),
}
