"""`python -m eval --checkpoint PATH --tasks fashion_mnist [--out results.json] [--weights live|ema]`."""
import argparse
import json
import sys
from pathlib import Path

from .load import load_checkpoint
from .tasks import TASKS
from .zeroshot import build_classifier, image_logits, metrics


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--tasks", default="fashion_mnist")
    p.add_argument("--weights", default="live", choices=["live", "ema"])
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N samples")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    names = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        print(f"error: unknown task(s) {unknown}; known: {sorted(TASKS)}", file=sys.stderr)
        return 2
    loaded = load_checkpoint(args.checkpoint, weights=args.weights)
    results = []
    for name in names:
        task = TASKS[name](loaded.transform, args.limit)
        clf = build_classifier(loaded.model, loaded.tokenizer, task["classnames"], task["templates"])
        m = metrics(image_logits(loaded.model, task["images"], clf), task["labels"])
        results.append({"dataset": task["dataset"], "model": str(loaded.path), "task": "zeroshot_classification",
                        "metrics": m, "step": loaded.step, "weights": args.weights,
                        "architecture": loaded.arch.to_dict()})
        print(f"{name} zero-shot ({task['split']}, {len(task['labels'])} images, step {loaded.step}): "
              f"top-1 {100 * m['acc1']:.2f}%  top-5 {100 * m['acc5']:.2f}%  "
              f"mean per-class recall {100 * m['mean_per_class_recall']:.2f}%")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
