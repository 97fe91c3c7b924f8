"""Growing a real checkpoint: what is written, that DeepSpeed loads it exactly, and that training resumes from
it at (tp, pp, dp) = (1, 1, 2), (1, 1, 1), (2, 1, 1) and (1, 2, 1) with the grown model's loss, then keeps
learning."""
import dataclasses
import shutil
import subprocess
import sys

import pytest
import torch

from growth.grow import main as grow_main
from growth.hook import grow_checkpoint
from growth.pim import PIM, fresh_init
from growth.universal import load_parameter
from pretrain import checkpoint as ckpt
from pretrain.arch import Architecture
from pretrain.model import CLIP
from pretrain.optim import named_groups
from pretrain.trainer import batch_fingerprint
from tests.conftest import ROOT, launch, metrics, rank_env
from tests.growth.conftest import MOVE, SOURCE_STEPS, tree_digest
from tests.growth.helpers import TOL
from tests.growth.runs import first_batches, grown_model, single_process_loss

pytestmark = pytest.mark.slow


def test_grown_checkpoint_contents(grown, source_run):
    tag = f"step{SOURCE_STEPS:08d}"
    assert (grown / "latest").read_text() == tag and (grown / "latest_universal").read_text() == tag
    assert ckpt.resolve(grown) == (grown, tag)
    tag_dir = grown / tag
    src_client = ckpt.read_client_state(ckpt.resolve(source_run)[0] / tag)
    states = torch.load(tag_dir / ckpt.MODEL_STATES, map_location="cpu", weights_only=True)
    client = states[ckpt.CLIENT_KEY]
    arch = Architecture.from_dict(client["architecture"])
    assert (arch.vision.layers, arch.text.width) == (4, 128)
    assert client["step"] == SOURCE_STEPS and client["data"] == src_client["data"]
    entry = client["growth_history"][-1]
    assert entry["move"] == MOVE and entry["source_step"] == SOURCE_STEPS
    assert entry["pim"] == {"m": 0.9, "source": "ema", "seed": 0, "inherit": True, "split": 0.5,
                            "depth_init": "copy", "noise": 0.0}  # the CLI's defaults, PIM's
    assert entry["layout"] == {"tp": 1, "pp": 1}
    assert client["run_config"]["model"] == arch.to_dict()
    init, m = fresh_init(arch, 0), 0.9  # PIM from the EMA: inherited tensors are exactly the stated blend
    for name in ("visual.class_embedding", "logit_scale", "visual.transformer.resblocks.0.ln_1.weight"):
        blend = m * src_client["ema"]["shadow"][name] + (1 - m) * init[name]
        assert torch.equal(load_parameter(tag_dir, name)["fp32"], blend), name
        assert torch.equal(client["ema"]["shadow"][name], blend), name
    ema = src_client["ema"]["shadow"]
    for new, old in ((1, 0), (3, 1)):  # vision 2 -> 4 blocks, depth_init copy: blocks 1 and 3 stack 0 and 1
        for suffix in ("ln_1.weight", "attn.in_proj_weight", "mlp.c_fc.bias", "attn.out_proj.weight",
                       "mlp.c_proj.bias"):
            name, copied = f"visual.transformer.resblocks.{new}.{suffix}", f"visual.transformer.resblocks.{old}."
            zero = suffix.startswith(("attn.out_proj", "mlp.c_proj"))  # the residual outputs: no source
            blend = m * (0 if zero else ema[copied + suffix]) + (1 - m) * init[name]
            grown_param = load_parameter(tag_dir, name)
            assert torch.equal(grown_param["fp32"], blend) and torch.equal(client["ema"]["shadow"][name], blend)
            prev = load_parameter(tag_dir, f"visual.transformer.resblocks.{new - 1}.{suffix}")
            for state in ("exp_avg", "exp_avg_sq"):  # the copy's moments are its predecessor's; zero if no source
                assert torch.equal(grown_param[state], torch.zeros_like(prev[state]) if zero else prev[state])
    w = ema["text_projection"]  # text width x2 at split 0.5: the two copies of a channel are read 0.25 and 0.75
    blend = m * torch.cat([w * 0.25, w * 0.75]) + (1 - m) * init["text_projection"]
    assert torch.equal(load_parameter(tag_dir, "text_projection")["fp32"], blend)
    with torch.device("meta"):
        model = CLIP(arch)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    assert {n: v.shape for n, v in client["ema"]["shadow"].items()} == shapes
    assert {n: v.shape for n, v in states["module"].items()} == shapes
    # DeepSpeed's param_shapes: one ordered dict per optimizer group, in the order the trainer's optimizer holds
    # them (a ZeRO load places values by it): named_parameters order, sizes that are not a multiple of 8 last
    assert [list(g) for g in states["param_shapes"]] == [[n for n, _ in g] for g in named_groups(model)]
    assert list(states["param_shapes"][1])[-1] == "logit_scale"
    assert sum(len(g) for g in states["param_shapes"]) == len(shapes)
    assert states["universal_checkpoint_info"] == ckpt.universal_checkpoint_info(list(shapes), arch.text.vocab, 1)
    for name in shapes:
        files = {p.name for p in (tag_dir / "zero" / name).iterdir()}
        assert files == {"fp32.pt", "exp_avg.pt", "exp_avg_sq.pt", "step.pt"}, name
        assert torch.equal(states["module"][name], load_parameter(tag_dir, name)["fp32"]), name
    source_tokenizer = ckpt.resolve(source_run)[0] / tag / "tokenizer.model"
    assert (tag_dir / "tokenizer.model").read_bytes() == source_tokenizer.read_bytes()


def test_deepspeed_loads_the_grown_state_exactly(grown, tmp_path):
    """A real ZeRO-2 engine (one rank: the 2-rank partitioned load is exercised by the dp=2 resume below) holds
    exactly the grown fp32 weights, Adam moments and step after universal loading."""
    tag_dir = grown / f"step{SOURCE_STEPS:08d}"
    env = rank_env()
    proc = subprocess.run([sys.executable, "tests/growth/ds_state_worker.py", str(tag_dir), str(tmp_path / "dump.pt")],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dump = torch.load(tmp_path / "dump.pt", map_location="cpu", weights_only=True)
    assert dump["steps"] == [float(SOURCE_STEPS)]
    for name, held in dump["params"].items():
        files = load_parameter(tag_dir, name)
        for state in ("fp32", "exp_avg", "exp_avg_sq"):
            assert torch.equal(held[state], files[state]), (name, state)


@pytest.mark.parametrize("tp, pp, dp", [(1, 1, 2), (1, 1, 1), (2, 1, 1), (1, 2, 1)],
                         ids=["to_dp2", "to_dp1", "to_tp2", "to_pp2"])
def test_training_resumes_from_the_grown_checkpoint(source_run, grown, tiny_data, tmp_path, tp, pp, dp):
    """Trained at (1,1,2), grown (vision depth +2, text width x2) onto (tp, pp, dp): the first loss is the grown
    model's single-process loss on the same batch; at dp=2 the saved data position is restored, at dp=1 the data
    restarts (the trainer's rule). On two ranks training goes on, and the loss on those first batches goes down
    (a fixed batch: the per-step losses of six different batches are too noisy to show it)."""
    if (tp, pp) != (1, 1):  # grown for that layout: the target is checked against it, and it is recorded
        grown = tmp_path / "grown"
        assert grow_main(["--from", str(source_run), "--move", MOVE, "--tp", str(tp), "--pp", str(pp),
                          "--out", str(grown), "--pim-m", "0.9", "--pim-source", "ema"]) == 0
        entry = ckpt.read_client_state(grown / f"step{SOURCE_STEPS:08d}")["growth_history"][-1]
        assert entry["layout"] == {"tp": tp, "pp": pp}
    nproc = tp * pp * dp
    steps = 6 if nproc == 2 else 1
    run = tmp_path / "run"
    launch(run, tiny_data, f"train.steps={SOURCE_STEPS + steps}", "train.lr=0.002", "train.warmup=1",
           "train.fingerprints=true", nproc=nproc, resume=str(grown), extra_args=("--tp", str(tp), "--pp", str(pp)),
           ds_config="ds_configs/zero1.json" if pp > 1 else "ds_configs/zero2.json")
    m = metrics(run)
    first = m[SOURCE_STEPS + 1]
    tag_dir = grown / f"step{SOURCE_STEPS:08d}"
    batches = first_batches(tag_dir, run, dp)
    readers = [b for b in first["batches"] if b]  # every rank of the first pipeline stage, TP ranks included
    assert readers == [[batch_fingerprint(*b)] for b in batches for _ in range(tp)], "not the batch the run took"
    assert abs(first["loss"] - single_process_loss(grown_model(tag_dir), batches)) <= TOL
    if nproc == 2:  # it learns: after 6 steps the first batches' loss is clearly lower (measured: 2.90 -> 2.72)
        final = run / "checkpoints" / f"step{SOURCE_STEPS + steps:08d}"
        trained = CLIP(Architecture.from_dict(ckpt.read_client_state(final)["architecture"]))
        trained.load_state_dict(ckpt.full_state_dict(final))
        assert single_process_loss(trained.eval(), batches) < first["loss"] - 0.05, [m[s]["loss"] for s in m]


def test_grow_the_grown_checkpoint_again(grown, tmp_path):
    """Growth step t+1 from the universal output of step t, to an architecture file, inheriting the last weights
    with m = 1: the regrown checkpoint computes its source's loss, and the history holds both steps."""
    src_tag = grown / f"step{SOURCE_STEPS:08d}"
    target = Architecture.from_dict(ckpt.read_client_state(src_tag)["architecture"])
    target = target.replace(text=dataclasses.replace(target.text, layers=3, mlp_ratio=6.0))
    target.save(tmp_path / "target.yaml")
    before = tree_digest(grown)
    tag_dir = grow_checkpoint(grown, Architecture.load(tmp_path / "target.yaml"), tmp_path / "regrown",
                              pim=PIM(m=1.0, source="last"))
    assert tree_digest(grown) == before
    history = ckpt.read_client_state(tag_dir)["growth_history"]
    assert [h["move"] for h in history] == [MOVE, "text.layers=3,text.mlp_ratio=6"]
    g = torch.Generator().manual_seed(0)
    texts = torch.randint(1, target.text.vocab - 2, (8, target.text.context), generator=g)
    texts[:, 9] = target.text.vocab - 1
    batch = [(torch.randn(8, 3, target.vision.image_size, target.vision.image_size, generator=g), texts)]
    before_loss, after_loss = (single_process_loss(grown_model(t), batch) for t in (src_tag, tag_dir))
    assert abs(before_loss - after_loss) <= TOL


def test_folders_named_with_parentheses_commas_and_spaces(source_run, grown, tmp_path):
    """DeepSpeed's ds_to_universal reads full paths as regular expressions; growth hands it plain-named links,
    so a source and an output folder named like this grow exactly as the plain-named fixture did."""
    odd = tmp_path / "run (copy), v+2"
    ckpt_dir, tag = ckpt.resolve(source_run)
    source = odd / "checkpoints"
    source.mkdir(parents=True)
    shutil.copytree(ckpt_dir / tag, source / tag)
    (source / "latest").write_text(tag)
    out = tmp_path / "grown (1), x"
    assert grow_main(["--from", str(odd), "--move", MOVE, "--tp", "1", "--pp", "1", "--out", str(out),
                      "--pim-m", "0.9", "--pim-source", "ema"]) == 0
    assert tree_digest(out / tag / "zero") == tree_digest(grown / tag / "zero")
