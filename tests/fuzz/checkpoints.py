"""Kinds `checkpoint` (a copy of the real checkpoint, mutated, read by `python -m eval` or `--resume` up to where
DeepSpeed would start) and `eval_task` (task names and task files of `python -m eval`, on the unmutated
checkpoint, loaded once per process)."""
from __future__ import annotations

import json
import os
import random
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from .configs import _argv, _write, base_config
from .data import copy_shards
from .harness import Case, Cli

TAG = "step00000002"
EVAL_ENV = {"WORLD_SIZE": "1", "RANK": "0"}


def _images(folder: Path, n: int, rng: random.Random) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.fromarray(np.full((28, 28), rng.randrange(256), np.uint8)).save(path)
        paths.append(path)
    return paths


def retrieval_jsonl(root: Path, rng: random.Random, rows=None) -> Path:
    paths = _images(root / "img", 4, rng)
    rows = rows if rows is not None else [{"image": f"img/{p.name}", "captions": [f"a photo of a shirt {i}"]}
                                          for i, p in enumerate(paths)]
    path = root / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _eval(checkpoint: str, tasks: str, root: Path, *extra: str) -> list[str]:
    return ["--checkpoint", checkpoint, "--tasks", tasks, "--limit", "4", "--batch-size", "4",
            "--out", str(root / "out" / "eval.json"), *extra]


def _eval_main():
    from eval.__main__ import main
    return main


class _Pickle:
    def __reduce__(self):
        return (os.system, ("true",))


def _torch_save(obj, path: Path) -> None:
    import torch
    torch.save(obj, path)


def checkpoint_case(rng: random.Random, root: Path, fx: dict) -> Case:
    run = root / "run"
    shutil.copytree(fx["run"], run)
    tag = run / "checkpoints" / TAG
    files = sorted(p for p in tag.iterdir() if p.is_file())
    op = rng.choice(["delete", "latest", "tokenizer", "truncate", "overwrite", "pickle", "client", "client",
                     "tag", "path"])
    expect, names = "error", [str(tag), str(run)]
    if op == "delete":
        victim = rng.choice(files + [run / "checkpoints" / "zero_to_fp32.py", run / "run_config.json",
                                     run / "metrics.jsonl"])
        victim.unlink()
        what, names = f"delete {victim.name}", names + [victim.name]
        expect = "error" if victim.parent == tag and victim.name != "tokenizer.model" else "error_or_accept"
    elif op == "latest":
        value = rng.choice([b"", b"step99999999", b"../../..", b"\xff\xfe\x00", "ünï".encode(), b"/etc",
                            b"x" * 5000, TAG.encode() + b"\n\n", b" " + TAG.encode(), b"metrics.jsonl"])
        latest = run / "checkpoints" / "latest"
        latest.write_bytes(value)
        what = f"latest={value[:20]!r}"
        expect = "error_or_accept" if value.strip() == TAG.encode() else "error"
        names.append(str(latest))
    elif op == "tokenizer":
        tok = tag / "tokenizer.model"
        shape = rng.choice(["garbage", "empty", "truncated", "other", "folder"])
        if shape == "garbage":
            tok.write_bytes(rng.randbytes(3000))
        elif shape == "empty":
            tok.write_bytes(b"")
        elif shape == "truncated":
            tok.write_bytes(tok.read_bytes()[: rng.randrange(1, tok.stat().st_size)])
        elif shape == "other":
            shutil.copyfile(Path(__file__).resolve().parents[2] / "data/tokenizer/tokenizer.model", tok)
        else:
            tok.unlink()
            tok.mkdir()
        what, names = f"tokenizer {shape}", names + [str(tok)]
        if shape == "folder":  # eval then takes the run's data.tokenizer, checked against the saved sha256
            expect = "error_or_accept"
    elif op in ("truncate", "overwrite"):
        victim = rng.choice([f for f in files if f.suffix == ".pt"])
        body = bytearray(victim.read_bytes())
        at = rng.randrange(len(body))
        if op == "truncate":
            del body[at:]
        else:
            body[at:at + 64] = rng.randbytes(64)
        victim.write_bytes(bytes(body))
        what, names = f"{op} {victim.name} at {at}/{victim.stat().st_size}", names + [str(victim)]
        expect = "error" if op == "truncate" else "error_or_accept"  # bytes inside a tensor's data read as values
    elif op == "pickle":
        victim = rng.choice([f for f in files if f.suffix == ".pt"])
        _torch_save({"module": _Pickle()}, victim)
        what, names = f"code-running pickle in {victim.name}", names + [str(victim)]
    elif op == "client":
        import torch
        states = tag / "mp_rank_00_model_states.pt"
        sd = torch.load(states, weights_only=False)
        client = sd["growclip"]
        field = rng.choice(["architecture", "step", "tokenizer_sha256", "ema", "data", "growth_history",
                            "run_config", "whole"])
        value = rng.choice([None, "x", 5, [], {}, {"vision": {"layers": -1}}, float("nan")])
        if field == "whole":
            sd["growclip"] = value
        elif rng.random() < 0.3:
            client.pop(field, None)
            value = "<deleted>"
        else:
            client[field] = value
        _torch_save(sd, states)
        what, names = f"client {field}={value!r}", names + [str(states), field]
        expect = ("error_or_accept" if field in ("ema", "data", "growth_history", "run_config")
                  or (field == "step" and value == 5) else "error")
    elif op == "tag":
        shape = rng.choice(["empty folder", "a file", "only tokenizer"])
        if shape == "a file":
            shutil.rmtree(tag)
            tag.write_text("x")
        else:
            for f in files:
                if shape == "empty folder" or f.name != "tokenizer.model":
                    f.unlink()
        what = f"tag {shape}"
    else:
        target = rng.choice([root / "missing", run / "checkpoints" / TAG / "mp_rank_00_model_states.pt", root,
                             run / "metrics.jsonl"])
        what, names = f"checkpoint path {target.name}", [str(target)]
        return Case("checkpoint", what, Cli(_eval_main(), _eval(str(target), f"retrieval:{retrieval_jsonl(root, rng)}",
                                                                root), EVAL_ENV), "error", names)
    if rng.random() < 0.5:
        tasks = f"retrieval:{retrieval_jsonl(root, rng)}"
        return Case("checkpoint", f"eval: {what}", Cli(_eval_main(), _eval(str(run), tasks, root), EVAL_ENV), expect,
                    names)
    cfg = base_config(fx, root)
    cfg["data"]["shards"] = str(copy_shards(fx, root))
    latest = rng.random() < 0.5
    if op in ("truncate", "overwrite", "pickle", "tokenizer") or what.endswith((".pt", "tokenizer.model")):
        # file contents are checked by every rank once DeepSpeed's process group is up (check_files_collective,
        # tests/train/test_untrusted_files.py) or loaded by DeepSpeed, past where these cases stop; the run's
        # tokenizer is data.tokenizer
        expect = "error_or_accept"
    if latest:  # the mutated run is the out_dir
        cfg["train"]["out_dir"] = str(root / "out")
        os.rename(run, root / "out")
        names = [n.replace(str(run), str(root / "out")) for n in names]
    argv = _argv(root, _write(root, cfg), extra=["--resume", "latest" if latest else str(run)])
    return Case("checkpoint", f"resume {'latest' if latest else 'PATH'}: {what}", Cli(_main_train(), argv), expect,
                names + ["--resume", "data.tokenizer"])


def _main_train():
    from pretrain.main import main
    return main


# ---- eval task files ------------------------------------------------------------------------------------------
_loaded: dict = {}


def _cached_eval_main(argv: list[str]) -> int:
    """`python -m eval` with the (unmutated) checkpoint loaded once per process."""
    import eval.__main__ as cli
    original = cli.load_checkpoint

    def cached(path, weights, device, tokenizer):
        key = (str(path), weights, device, tokenizer)
        if key not in _loaded:
            _loaded[key] = original(path, weights, device, tokenizer)
        return _loaded[key]
    cli.load_checkpoint = cached
    try:
        return cli.main(argv)
    finally:
        cli.load_checkpoint = original


def _bad_png(kind: str) -> bytes:
    if kind == "huge":
        ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr +
                struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))
    return {"text": b"not a png", "empty": b""}[kind]


def eval_task_case(rng: random.Random, root: Path, fx: dict) -> Case:
    op = rng.choice(["names", "folder", "jsonl", "jsonl", "classnames", "templates", "retrieval", "retrieval",
                     "shards"])
    extra: list[str] = []
    expect, names = "error", []
    if op == "names":
        tasks = rng.choice(["foo", "classification:", "retrieval:", ",,", "retrieval:{a,b", "mnist,foo",
                            "classification:/nonexistent", "retrieval:/nonexistent.jsonl", "ünï", "x" * 500])
        last = tasks.split(",")[-1]
        what, names = f"tasks {tasks[:30]!r}", [last[:30] or "no tasks", last.split(":", 1)[-1][:30] or "no tasks"]
    elif op == "folder":
        folder = root / "cls"
        shape = rng.choice(["bad images", "empty", "files only", "unicode classes", "one class empty", "huge image",
                            "classnames count"])
        if shape != "empty":
            folder.mkdir()
        if shape in ("bad images", "unicode classes", "one class empty", "huge image", "classnames count"):
            for c in ("shirt", "bag", "ünï 🙂" if shape == "unicode classes" else "coat"):
                _images(folder / c, 0 if shape == "one class empty" and c == "bag" else 2, rng)
            if shape in ("bad images", "huge image"):
                kind = "huge" if shape == "huge image" else rng.choice(["text", "empty"])
                (folder / "shirt" / "bad.png").write_bytes(_bad_png(kind))
            if shape == "classnames count":
                (root / "names.txt").write_text("a\nb\n")
                extra = ["--classnames", str(root / "names.txt")]
        elif shape == "files only":
            _images(folder, 2, rng)
        tasks, what = f"classification:{folder}", f"class folder: {shape}"
        expect = "error_or_accept" if shape in ("bad images", "unicode classes", "one class empty",
                                                "huge image") else "error"
        names = [str(folder), str(root / "names.txt")]
    elif op in ("jsonl", "classnames", "templates"):
        imgs = _images(root / "img", 3, rng)
        rows = [{"image": f"img/{p.name}", "label": i % 2} for i, p in enumerate(imgs)]
        names_file, templates = root / "names.txt", root / "templates.txt"
        names_file.write_text("shirt\nbag\n")
        templates.write_text("a photo of a {c}.\n")
        ok = False
        if op == "jsonl":
            shape = rng.choice(["label str", "label float", "label negative", "label huge", "label missing",
                                "image missing", "image dotdot", "image absolute", "not JSON", "a list row",
                                "empty", "not UTF-8", "image int", "label bool"])
            ok = shape in ("image missing", "image dotdot", "image absolute")
            row = rows[0]
            row.update({"label str": {"label": "1"}, "label float": {"label": 0.5}, "label negative": {"label": -1},
                        "label huge": {"label": 10 ** 30}, "image missing": {"image": "img/nope.png"},
                        "image dotdot": {"image": "../../../../etc/passwd.png"}, "label bool": {"label": True},
                        "image absolute": {"image": "/nonexistent.png"}, "image int": {"image": 5}}.get(shape, {}))
            if shape == "label missing":
                del row["label"]
            lines = [json.dumps(r) for r in rows]
            text = "\n".join(lines).encode()
            if shape == "not JSON":
                text += b"\n{oops"
            elif shape == "a list row":
                text += b"\n[1, 2]"
            elif shape == "empty":
                text = b""
            elif shape == "not UTF-8":
                text = b"\xff\xfe" + text
        else:
            text = "\n".join(json.dumps(r) for r in rows).encode()
            if op == "classnames":
                shape = rng.choice(["empty", "JSON not a list", "JSON ints", "not UTF-8", "missing", "one name",
                                    "unicode", "huge"])
                ok = shape in ("unicode", "huge")
                names_file = root / ("names.json" if shape.startswith("JSON") else "names.txt")
                body = {"empty": b"", "JSON not a list": b"{\"a\": 1}", "JSON ints": b"[1, 2]",
                        "not UTF-8": b"\xff\xfe", "one name": b"shirt\n", "unicode": "ünï 🙂\n€\n".encode(),
                        "huge": ("x" * 100000 + "\n").encode() * 2}.get(shape)
                if body is not None:
                    names_file.write_bytes(body)
                else:
                    names_file = root / "missing.txt"
            else:
                shape = rng.choice(["no {c}", "{x}", "unbalanced {c", "{0}", "{c.__class__}", "empty", "{{c}}",
                                    "{c!r:>10}", "{c[0]}", "{}"])
                templates.write_text({"no {c}": "a photo", "{x}": "a {c} and {x}", "unbalanced {c": "a {c} {",
                                      "{0}": "a {c} {0}", "{c.__class__}": "a {c.__class__}", "empty": "",
                                      "{{c}}": "a {{c}}", "{c!r:>10}": "a {c!r:>10}", "{c[0]}": "a {c[0]}",
                                      "{}": "a {c} {}"}[shape])
                ok = shape in ("{c!r:>10}", "{c[0]}", "{c.__class__}")
            extra = ["--templates", str(templates)]
        path = root / "labels.jsonl"
        path.write_bytes(text)
        extra += ["--classnames", str(names_file)]
        tasks, what = f"classification:{path}", f"{op}: {shape}"
        expect, names = ("error_or_accept" if ok else "error"), [str(path), str(names_file), str(templates)]
    elif op == "retrieval":
        shape = rng.choice(["captions int", "captions empty", "caption unicode", "no captions at all", "not JSON",
                            "image missing", "captions dicts", "huge caption", "image is a folder", "image text"])
        imgs = _images(root / "img", 3, rng)
        (root / "img" / "text.png").write_bytes(b"text")
        rows = [{"image": f"img/{p.name}", "captions": ["a shirt"]} for p in imgs]
        rows[0].update({"captions int": {"captions": 5}, "captions empty": {"captions": []},
                        "caption unicode": {"captions": ["ünï 🙂 \u202e"]}, "image missing": {"image": "img/x.png"},
                        "captions dicts": {"captions": [{"a": 1}]}, "huge caption": {"captions": ["shirt " * 100000]},
                        "image is a folder": {"image": "img"}, "image text": {"image": "img/text.png"}}.get(shape, {}))
        if shape == "no captions at all":
            for r in rows:
                r["captions"] = []
        path = retrieval_jsonl(root, rng, rows)
        if shape == "not JSON":
            path.write_text(path.read_text() + "{nope\n")
        tasks, what = f"retrieval:{path}", f"retrieval jsonl: {shape}"
        expect = "error" if shape in ("no captions at all", "not JSON") else "error_or_accept"
        names = [str(path)]
    else:
        from .data import MEMBER_EDITS, _rewrite
        data = copy_shards(fx, root)
        shape = rng.choice(sorted(MEMBER_EDITS) + ["truncated", "random"])
        victim = data / "shard-000000.tar"
        if shape == "truncated":
            victim.write_bytes(victim.read_bytes()[: rng.randrange(victim.stat().st_size)])
        elif shape == "random":
            victim.write_bytes(rng.randbytes(4096))
        else:
            _rewrite(victim, lambda members: MEMBER_EDITS[shape][0](members, rng))
        tasks, what, expect, names = f"retrieval:{data}", f"retrieval shards: {shape}", "error_or_accept", [str(data)]
    return Case("eval_task", what, Cli(_cached_eval_main, _eval(fx["run"], tasks, root, *extra), EVAL_ENV), expect,
                names + ["--classnames", "--templates", "template"])
