"""GrowCLIP evaluation: zero-shot classification, retrieval and linear probe from any checkpoint, with
CLIP_benchmark's semantics. See README.md; the CLI is `python -m eval`, the trainer hook `eval.intrain.run`."""
