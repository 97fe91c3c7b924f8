"""Write a source as webdataset tar shards plus a manifest.

    python -m pretrain.data.prepare SOURCE --out DIR [--split train] [--shard-size 2000] [--limit N]
                                    [--raw data/raw] [--input FILE] [--seed 0] [--max-pixels 50000000]
                                    [--max-side N] [--stage N] [--image-size 32]

Each sample is KEY.png (KEY.jpg when the input already is a JPEG), KEY.txt (UTF-8 caption) and KEY.json
(metadata). Shards and manifest are written to a temp name and renamed, so a crash never leaves a half shard
under a final name; stale shard-*.tar files from an earlier run in DIR are removed.

The synthetic source draws its samples (`sources/synthetic.py`): `--split train|heldout --stage 1|2|3
[--image-size 28|32|64] [--seed S]`; without --limit it writes its default count for the split and stage.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections import Counter
from pathlib import Path

import webdataset as wds
from PIL import Image
from tqdm import tqdm

from .manifest import write_manifest
from .sources import registry

PNG_MAGIC, JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"


def encode_image(image: bytes | Image.Image, max_pixels: int, max_side: int | None = None) -> tuple[str, bytes] | str:
    """(extension, bytes) ready for the tar, or a skip reason. PNG/JPEG bytes pass through untouched (only the
    header is read, to refuse decompression bombs) unless longer than max_side; everything else, and every
    downscaled image, is written as PNG."""
    if isinstance(image, bytes):
        try:
            header = Image.open(io.BytesIO(image))
        except Image.DecompressionBombError:
            return "too_large"
        except Exception:
            return "bad_image"
        if header.width * header.height > max_pixels:
            return "too_large"
        small = max_side is None or max(header.size) <= max_side
        if small and (image.startswith(PNG_MAGIC) or image.startswith(JPEG_MAGIC)):
            return ("png" if image.startswith(PNG_MAGIC) else "jpg"), image
        image = header
    buf = io.BytesIO()
    try:
        if max_side is not None and max(image.size) > max_side:
            if image.mode in ("1", "P"):  # PIL would resize these with NEAREST
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        image.save(buf, format="PNG")
    except Exception:
        return "bad_image"
    return "png", buf.getvalue()


def write_shards(samples, out: Path, shard_size: int, max_pixels: int, skipped: Counter, limit: int | None = None,
                 max_side: int | None = None, total: int | None = None):
    """Write samples into out/shard-NNNNNN.tar; returns [{"path", "samples"}]."""
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict] = []
    writer, count, written, keys = None, 0, 0, set()

    def close():
        writer.close()
        name = f"shard-{len(shards):06d}.tar"
        os.replace(out / (name + ".tmp"), out / name)
        shards.append({"path": name, "samples": count})

    with tqdm(total=limit if limit is not None else total, unit="sample", desc=f"prepare {out.name}") as bar:
        for sample in samples:
            if limit is not None and written >= limit:
                break
            if sample.key in keys:  # webdataset would merge or reject the two samples
                skipped["duplicate_key"] += 1
                continue
            keys.add(sample.key)
            encoded = encode_image(sample.image, max_pixels, max_side)
            if isinstance(encoded, str):
                skipped[encoded] += 1
                continue
            if writer is None:
                writer = wds.TarWriter(str(out / f"shard-{len(shards):06d}.tar.tmp"), mtime=0)
                count = 0
            ext, data = encoded
            writer.write({"__key__": sample.key, ext: data, "txt": sample.caption.encode("utf-8"),
                          "json": json.dumps(sample.meta, ensure_ascii=False).encode("utf-8")})
            count += 1
            written += 1
            bar.update(1)
            if count == shard_size:
                close()
                writer = None
    if writer is not None:
        close()
    keep = {s["path"] for s in shards}
    for stale in out.glob("shard-*.tar"):
        if stale.name not in keep:
            stale.unlink()
    return shards


def main(argv: list[str] | None = None) -> Path:
    sources = registry()
    p = argparse.ArgumentParser(prog="python -m pretrain.data.prepare", description=__doc__.split("\n")[0])
    p.add_argument("source", choices=sorted(sources))
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--split", default="train")
    p.add_argument("--shard-size", type=int, default=2000)
    p.add_argument("--limit", type=int, default=None, help="stop after N written samples")
    p.add_argument("--raw", type=Path, default=Path("data/raw"), help="DATA_DIR/raw from scripts/fetch_data.sh")
    p.add_argument("--input", default=None, help="folder source: folder/CSV/JSONL; else overrides the default "
                   "location (fashion_mnist IDX dir, mnist.pkl.gz, openclipart share dir)")
    p.add_argument("--seed", type=int, default=0, help="seed of the caption templates (synthetic: of the scenes)")
    p.add_argument("--max-pixels", type=int, default=50_000_000, help="skip images larger than this (header)")
    p.add_argument("--max-side", type=int, default=None,
                   help="downscale images whose longer side exceeds this (e.g. 512 for openclipart: fast loading)")
    p.add_argument("--stage", type=int, default=None, help="synthetic only: grammar stage 1, 2 or 3")
    p.add_argument("--image-size", type=int, default=None, help="synthetic only: 28, 32 (default) or 64")
    args = p.parse_args(argv)
    if args.shard_size < 1:
        p.error("--shard-size must be >= 1")

    module = sources[args.source]
    options, extra, total = {}, {}, None
    if args.source == "synthetic":
        if args.split not in module.SPLITS:
            p.error(f"--split must be one of {', '.join(module.SPLITS)} for synthetic, got {args.split!r}")
        if args.stage is None:
            p.error(f"--stage is required for synthetic: one of {', '.join(map(str, module.STAGES))}")
        if args.stage not in module.STAGES:
            p.error(f"--stage must be one of {', '.join(map(str, module.STAGES))}, got {args.stage}")
        image_size = module.DEFAULT_IMAGE_SIZE if args.image_size is None else args.image_size
        if image_size not in module.IMAGE_SIZES:
            p.error(f"--image-size must be one of {', '.join(map(str, module.IMAGE_SIZES))}, got {image_size}")
        options = {"stage": args.stage, "image_size": image_size, "count": args.limit}
        extra = module.manifest_fields(args.stage, args.seed, image_size)
        total = module.DEFAULT_SAMPLES[args.split][args.stage] if args.limit is None else args.limit
    else:
        for flag, value in (("--stage", args.stage), ("--image-size", args.image_size)):
            if value is not None:
                p.error(f"{flag} is only for the synthetic source")
    skipped: Counter = Counter()
    samples = module.samples(args.split, raw=args.raw, input=args.input, seed=args.seed, skipped=skipped, **options)
    shards = write_shards(samples, args.out, args.shard_size, args.max_pixels, skipped, args.limit, args.max_side,
                          total)
    manifest = {
        "source": args.source,
        "split": args.split,
        "shards": shards,
        "samples": sum(s["samples"] for s in shards),
        "skipped": dict(sorted(skipped.items())),
        "created_by": "python -m pretrain.data.prepare " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if getattr(module, "SPLIT_RULE", None):
        manifest["split_rule"] = module.SPLIT_RULE
    manifest.update(extra)
    path = write_manifest(args.out, manifest)
    print(f"wrote {manifest['samples']} samples in {len(shards)} shards to {args.out}; skipped {manifest['skipped']}")
    return path


if __name__ == "__main__":
    main()
