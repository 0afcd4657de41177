"""Benchmark: time of one training step of TRADES and ERA against its floor (JSON on stdout).

floor = (number of forward+backward passes the step needs) × (time of one training
forward+backward pass on the same batch). TRADES (eq. 7) needs K attack passes + 2
(clean and adversarial forward, one backward through both): K + 2. ERA with the paper's
targeted inner minimisation (eq. 5, 8) needs 2K + 3 (two inner attacks, three forwards);
ERA with the authors' shared point K + 2. Both also run one no-grad clean forward and
the optimizer step, which count against them. Goal: ``*_step_vs_floor`` <= 1.2.

On CUDA the same keys, each a ratio to the floor measured in the same run, plus
``amp_speedup`` (``--amp-speedup``: fp32 TRADES step time / bf16 TRADES step time, both
against their own floors' model; > 1 means bf16 is faster) and the card's name in
``device``. ``--channels-last`` puts model and batch in NHWC (CUDA).

Usage: python bench/train.py [--model cnn|mlp|resnet18|wrn-28-10] [--batch 128] [--steps 10]
       [--device auto] [--repeats 15] [--amp-speedup] [--channels-last]
Timings are medians of interleaved repetitions (the machine may be shared).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _setup(args: argparse.Namespace, device: torch.device):
    """The model (train mode) and a random batch ``x``, ``y``; whether both are NHWC."""
    from abstain import models

    torch.manual_seed(0)
    if args.model == "cnn":
        model, shape, k = models.create("cnn", 10, width=16), (1, 8, 8), 10
    elif args.model == "mlp":
        model, shape, k = models.create("mlp", 3, in_features=2), (2,), 3
    else:
        model, shape, k = models.create(args.model, 10), (3, 32, 32), 10
    model = model.to(device).train()
    cl = args.channels_last and device.type == "cuda" and len(shape) == 3
    x = torch.rand(args.batch, *shape, device=device)
    if cl:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return model, x, torch.randint(0, k, (args.batch,), device=device), cl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn", choices=["cnn", "mlp", "resnet18", "wrn-28-10"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--amp-speedup", action="store_true", help="also time the TRADES step in bf16")
    ap.add_argument("--channels-last", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from abstain import losses
    from abstain.utils import resolve_device

    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True   # as the trainer: fixed shapes
    model, x, y, cl = _setup(args, device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    gen = torch.Generator(device=device)
    eps = 0.1 if args.model in ("cnn", "mlp") else 2 / 255
    K = args.steps

    def train_pass() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()

    def attack_pass() -> None:
        xx = x.clone().requires_grad_(True)
        for p in model.parameters():
            p.requires_grad_(False)
        torch.autograd.grad(model(xx).sum(), xx)
        for p in model.parameters():
            p.requires_grad_(True)

    def loss_step(name: str, amp: bool = False, **params):
        fn = losses.get(name)

        def step() -> None:
            gen.manual_seed(0)
            # the trainer's autocast (CUDA only, as there); the losses keep attacks in fp32
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                                enabled=amp and device.type == "cuda"):
                loss, _ = fn(model, x, y, {"eps": eps, "steps": K, "generator": gen, **params})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    work = {"train_pass": train_pass, "attack_pass": attack_pass,
            "trades": loss_step("trades"), "era": loss_step("era", era_inner="targeted"),
            "era_shared": loss_step("era", era_inner="untargeted-shared"),
            "dga": loss_step("dga")}
    if args.amp_speedup:
        work["trades_bf16"] = loss_step("trades", amp=True)
    for fn in work.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in work}
    for _ in range(args.repeats):
        for name, fn in work.items():
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    passes = {"trades": K + 2, "era": 2 * K + 3, "era_shared": K + 2, "dga": 2 * K + 3}
    out = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s))",
        "model": args.model, "batch": args.batch, "pgd_steps": K,
        "train_pass_s": med["train_pass"], "attack_pass_s": med["attack_pass"],
        "trades_step_s": med["trades"], "era_step_s": med["era"], "era_shared_step_s": med["era_shared"],
        "dga_step_s": med["dga"], "passes": passes,
        "trades_step_vs_floor": med["trades"] / (passes["trades"] * med["train_pass"]),
        "era_step_vs_floor": med["era"] / (passes["era"] * med["train_pass"]),
        "era_shared_step_vs_floor": med["era_shared"] / (passes["era_shared"] * med["train_pass"]),
        "dga_step_vs_floor": med["dga"] / (passes["dga"] * med["train_pass"]),
        "era_vs_trades": med["era"] / med["trades"],
        "era_shared_vs_trades": med["era_shared"] / med["trades"],
        "goal": "*_step_vs_floor <= 1.2",
        "channels_last": cl,
    }
    if args.amp_speedup:
        out["trades_bf16_step_s"] = med["trades_bf16"]
        out["amp_speedup"] = med["trades"] / med["trades_bf16"]
        out["amp_note"] = ("fp32 / bf16 TRADES step time (autocast of the training passes; the "
                           "attacks run in fp32)" + ("" if device.type == "cuda" else
                                                      "; CPU: autocast is off, so about 1"))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
