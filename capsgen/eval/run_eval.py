"""``capsgen eval RUN``: every capability a run has, measured.

- classify: test error on the run's test split (the first ``n_test`` images);
- attributes: per-attribute accuracy on the test split;
- the family's own held-out figures (``Task.evaluate``, e.g. a GAN discriminator's accuracy);
- generate: FID, KID, IS, precision/recall, density/coverage against the real test split, beside
  the real-vs-real floor (:mod:`capsgen.eval.report_metrics`);
- class-conditional: conditional fidelity — the share of samples drawn for class k that capsgen's
  evaluator classifier assigns to k, per class and overall;
- attribute-conditional: attribute-conditioned fidelity — one sample per attribute vector a of the
  test split (cycled to the sample count), and the share whose attributes, as capsgen's attribute
  evaluator (:mod:`capsgen.eval.attribute_evaluator`) reads them, equal a: per attribute and all
  at once, beside that evaluator's own accuracy on the real test images.
"""
from __future__ import annotations

from typing import Any

import torch

from capsgen.errors import CapsgenError
from capsgen.models.common import batched
from capsgen.runs import open_run
from capsgen.train.capabilities import capabilities_of

DEFAULT_SAMPLES = 10_000    # images drawn from a generative run when n is not given


def class_fidelity(task: Any, evaluator: Any, num_classes: int, per_class: int, seed: int) -> dict[str, Any]:
    """Share of samples drawn for class k that the evaluator assigns to k (per class and mean)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = task.sample_classes(labels, g)
    pred = evaluator.probs(images).argmax(1)
    per = [(pred[labels == k] == k).float().mean().item() for k in range(num_classes)]
    return {"per_class": per, "mean": sum(per) / len(per), "samples_per_class": per_class}


def attribute_fidelity(task: Any, evaluator: Any, attributes: torch.Tensor, n: int, seed: int) -> dict[str, Any]:
    """Draw one image per row of ``attributes`` [M, A] (cycled to n rows) and compare the attributes
    the evaluator reads in them with the requested ones: per attribute and all-equal shares."""
    g = torch.Generator().manual_seed(seed)
    want = attributes[torch.arange(n) % len(attributes)].long()
    got = evaluator.predict(task.sample_attributes(want, g))
    same = got == want
    return {"per_attribute": dict(zip(evaluator.names, same.float().mean(0).tolist())),
            "mean": same.float().mean().item(), "all_equal": same.all(1).float().mean().item(), "samples": n,
            "evaluator_accuracy": evaluator.per_attribute, "evaluator_mean_accuracy": evaluator.accuracy}


def evaluate_run(path: str, n: int | None = None, seed: int = 0, which: str = "best",
                 device: str | None = "cpu", data_dir: str | None = None) -> dict[str, Any]:
    """A dict with one entry per capability of the run (see the module docstring).

    Every check that can fail runs before an evaluator is trained (minutes, once per dataset and
    image size): the sample count, the run, its test split and its samples' shape. The evaluators
    are those of the run's ``train.image_size`` (the dataset's own size when it has none).
    """
    from capsgen.eval.report_metrics import check_sample_count

    if n is not None and n < 1:
        raise CapsgenError(f"--n must be a positive number, got {n}")
    opened = open_run(path, which, device)
    task, tcfg = opened.task, opened.train_config
    caps = capabilities_of(task)
    if "generate" in caps:
        check_sample_count(n)
    out: dict[str, Any] = {"run": str(opened.run.path), "family": tcfg.family, "data": tcfg.data,
                           "checkpoint": opened.checkpoint.stem, "capabilities": caps}
    data_dir = data_dir or tcfg.data_dir
    test = opened.test_batch(None, data_dir)
    test_n = test[:n] if n is not None else test
    with torch.no_grad():
        out["figures"] = task.evaluate(test_n)
    if "classify" in caps:
        scores = batched(task.class_scores, test_n.images, task.device)
        out["classify"] = {"test_error": (scores.argmax(1) != test_n.labels).float().mean().item(),
                           "n": len(test_n)}
    if "attributes" in caps and test_n.attributes is not None:
        probs = batched(task.attribute_probs, test_n.images, task.device)
        acc = ((probs > 0.5).float() == test_n.attributes).float().mean(0)
        out["attributes"] = {"per_attribute": dict(zip(opened.info.attribute_names, acc.tolist())),
                             "mean": acc.mean().item(), "n": len(test_n)}
    if "generate" in caps:
        from capsgen.eval.evaluator import get_evaluator
        from capsgen.eval.report_metrics import evaluate_samples
        from capsgen.report.figures import to_uint8_hwc

        m = n or DEFAULT_SAMPLES
        images = to_uint8_hwc(task.sample(m, torch.Generator().manual_seed(seed)))
        if images.shape[1:] != tuple(test.images.shape[2:]) + (test.images.shape[1],):
            raise CapsgenError(f"{opened.run.path}: its samples are {list(images.shape[1:])} but its test images "
                               f"{list(test.images.shape[1:])}; the run folder does not match its config")
        size = tcfg.image_size
        ev = get_evaluator(tcfg.data, data_dir, image_size=size)
        out["generate"] = evaluate_samples(images, tcfg.data, m, ev, data_dir=data_dir, seed=seed,
                                           source=str(opened.run.path), image_size=size)
        if "class-conditional" in caps and opened.info.num_classes:
            per = max(1, m // opened.info.num_classes)
            out["class-conditional"] = class_fidelity(task, ev, opened.info.num_classes, per, seed)
        if "attribute-conditional" in caps and test_n.attributes is not None:
            from capsgen.eval.attribute_evaluator import get_attribute_evaluator

            aev = get_attribute_evaluator(tcfg.data, data_dir, image_size=size)
            out["attribute-conditional"] = attribute_fidelity(task, aev, test_n.attributes, m, seed)
    return out


def format_run_eval(res: dict[str, Any]) -> str:
    from capsgen.eval.report_metrics import format_table

    lines = [f"{res['run']}: {res['family']} on {res['data']} ({res['checkpoint']} checkpoint); "
             f"can: {', '.join(res['capabilities']) or 'nothing beyond training'}"]
    if "classify" in res:
        c = res["classify"]
        lines.append(f"test error: {100 * c['test_error']:.2f}% on {c['n']} {res['data']} test images")
    if "attributes" in res:
        a = res["attributes"]
        lines.append(f"attribute accuracy: {100 * a['mean']:.2f}% mean over {len(a['per_attribute'])} attributes "
                     f"on {a['n']} test images")
        lines += [f"  {k:<24} {100 * v:6.2f}%" for k, v in a["per_attribute"].items()]
    if "generate" in res:
        lines += ["", format_table(res["generate"])]
    if "class-conditional" in res:
        f = res["class-conditional"]
        lines.append(f"conditional fidelity: {100 * f['mean']:.1f}% of samples drawn for class k are "
                     f"classified k by the evaluator ({f['samples_per_class']} per class): "
                     + " ".join(f"{100 * v:.0f}" for v in f["per_class"]))
    if "attribute-conditional" in res:
        f = res["attribute-conditional"]
        lines.append(f"attribute-conditioned fidelity: {100 * f['all_equal']:.1f}% of {f['samples']} samples show "
                     f"every requested attribute, {100 * f['mean']:.1f}% of requested attributes on average, "
                     "as the attribute evaluator reads them (its own accuracy on real test images beside):")
        lines += [f"  {k:<24} {100 * v:6.2f}%   (evaluator {100 * f['evaluator_accuracy'].get(k, float('nan')):.2f}%)"
                  for k, v in f["per_attribute"].items()]
    return "\n".join(lines)


def sample_verdict(path: str, n: int = 1000, seed: int = 0, confident: float = 0.9,
                   device: str | None = "cpu") -> dict[str, Any]:
    """A newcomer's verdict on a generative run: FID beside its real-vs-real floor, how many
    classes the samples hit, and the share the evaluator classifies with confidence >= ``confident``.
    """
    from capsgen.eval.evaluator import get_evaluator
    from capsgen.eval.report_metrics import evaluate_samples
    from capsgen.report.figures import to_uint8_hwc

    opened = open_run(path, "last", device)
    task, tcfg = opened.task, opened.train_config
    if "generate" not in capabilities_of(task):
        raise CapsgenError(f"{opened.run.path} is a {tcfg.family} run, which cannot generate images")
    images = task.sample(n, torch.Generator().manual_seed(seed))
    ev = get_evaluator(tcfg.data, tcfg.data_dir, image_size=tcfg.image_size)
    res = evaluate_samples(to_uint8_hwc(images), tcfg.data, n, ev, data_dir=tcfg.data_dir, seed=seed,
                           source=str(opened.run.path), image_size=tcfg.image_size)
    probs = ev.probs(images)
    cc = res["samples"]["class_coverage"]
    return {"n": n, "fid": res["samples"]["fid"], "fid_floor": res["real_vs_real"]["fid"],
            "classes_hit": cc["classes_hit"], "classes": len(cc["counts"]),
            "confident_share": (probs.max(1).values >= confident).float().mean().item(),
            "confidence": confident, "evaluator_accuracy": ev.accuracy}


def format_verdict(v: dict[str, Any]) -> str:
    return (f"evaluator's verdict on {v['n']} samples: FID {v['fid']:.1f} (real-vs-real floor {v['fid_floor']:.1f}); "
            f"{v['classes_hit']} of {v['classes']} classes drawn; {100 * v['confident_share']:.0f}% classified "
            f"with confidence >= {v['confidence']:g} by an evaluator of {100 * v['evaluator_accuracy']:.1f}% test "
            "accuracy")
