"""The training loop: from the current kimg to a target kimg, snapshotting every N kimg, exactly resumable.

The loop knows nothing of its caller: it reports through `progress_fn(stats)` and stops when
`abort_fn()` returns True (after writing a checkpoint), as NVlabs' training_loop does. That is how a
Prefect task watches it and how SIGTERM turns into "checkpoint, then exit".

Exact resume: everything the next step depends on is in the checkpoint (weights, optimizer moments,
ADA state, RNG states, sampler position, counters), so training to 2k, or to k then kill and resume
to 2k, gives bit-identical weights on CPU.
"""
from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from models import checkpoint as ck
from models import distributed as dd
from models import losses, ops
from models.arch import Arch, build_arch
from models.train_config import TrainConfig, from_saved  # noqa: F401  (TrainConfig: its home is torch-free)
from models.atomic_file import is_png, publish
from models.augment import AdaController, AugmentPipe
from models.transfer import Networks, TransferError, arch_differences, freeze_discriminator
from models.data import SamplerState, ShuffledSampler, random_xflip, to_float
from models.run_dir import RunDir

CODE_VERSION = "ganflow-train-3"  # bump when the checkpoint layout or the step changes


class Trainer:
    def __init__(self, cfg: TrainConfig, images_u8: torch.Tensor, run_dir: str | Path,
                 device: str | torch.device = "cpu"):
        self.cfg, self.run_dir, self.device = cfg, Path(run_dir), torch.device(device)
        torch.manual_seed(cfg.seed)
        self.arch: Arch = build_arch(cfg)
        self.G, self.D = self.arch.G.to(self.device), self.arch.D.to(self.device)
        self.frozen = freeze_discriminator(self.D, cfg.freeze_d)  # before the optimizers: they skip these
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.images = images_u8
        self.sampler = ShuffledSampler(len(images_u8), cfg.seed)
        # Data-parallel: every process draws the same global batch of indices and latents, and takes its
        # share (rank::world); the other random draws (noise, augmentation) are its own.
        self.rank, self.world = dd.rank(), dd.world_size()
        if self.arch.batch % self.world:
            raise ValueError(f"batch {self.arch.batch} does not split evenly over {self.world} processes")
        self.rounds = _rounds(self.arch.batch // self.world, cfg.batch_gpu, self.arch.batch, self.world)
        self.latent_rng = torch.Generator().manual_seed(cfg.seed)
        own_seed = cfg.seed + 1_000_003 * self.rank
        if self.rank:
            torch.manual_seed(own_seed)
        # numpy's and python's generators are in every checkpoint too: seeded, a checkpoint's bytes (and so
        # DVC's hash of it) depend only on the run, never on the process that wrote it.
        np.random.seed(own_seed % 2**32)
        random.seed(own_seed)
        self.augment = self.ada = None
        if self.arch.ada_target > 0:
            # The reference's default 'bgc' pipe; p starts at 0 and the controller moves it.
            self.augment = AugmentPipe().to(self.device)
            self.ada = AdaController(target=self.arch.ada_target, interval=cfg.ada_interval, ada_kimg=cfg.ada_kimg,
                                     batch=self.arch.batch)
        # Lazy regularization: the reference scales lr and betas so a regularized net takes the same steps.
        self.opt_G = _adam(self.G, self.arch.lr, cfg.betas, cfg.pl_interval if self.arch.pl_weight > 0 else 0)
        self.opt_D = _adam(self.D, self.arch.d_lr, cfg.betas, cfg.r1_interval if self.arch.lazy_r1 else 0)
        self.pl_mean = torch.zeros([], device=self.device)  # running mean of path lengths
        if cfg.amp not in ("auto", "bf16", "off"):
            raise ValueError(f"amp must be auto, bf16 or off, not {cfg.amp!r}")
        # bfloat16 autocast: fp32's range, so no loss scaling (fp16 would need a GradScaler and clamps);
        # weights, optimizer moments and losses stay fp32.
        self.amp = cfg.amp == "bf16" or (cfg.amp == "auto" and self.device.type == "cuda")
        self.d_loss_fn, self.g_loss_fn = losses.LOSSES[self.arch.loss]
        self.nimg = 0
        self.step = 0

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
            "ada": self.ada.state_dict() if self.ada else None,
            "augment_p": float(self.augment.p) if self.augment is not None else 0.0,
            "nimg": self.nimg, "step": self.step, "kimg": self.nimg / 1000, "pl_mean": self.pl_mean.item(),
            "sampler": {"epoch": self.sampler.state.epoch, "index": self.sampler.state.index},
            "rng": ck.rng_state(), "latent_rng": self.latent_rng.get_state(),
            "rng_ranks": dd.gather_objects(ck.rng_state()) if self.world > 1 else None,
            "config": _plain(asdict(self.cfg)), "arch": self.describe_arch(), "code_version": CODE_VERSION,
        }

    def load_state_dict(self, state: dict, weights_only: bool = False) -> None:
        """Restore a checkpoint; with weights_only, take G/D/G_ema alone (transfer learning)."""
        if not weights_only and state.get("code_version") != CODE_VERSION:
            raise ValueError(f"this checkpoint was written by {state.get('code_version')!r} and this version "
                             f"({CODE_VERSION}) cannot continue it exactly: start a new run directory, with "
                             f"--resume-from on the checkpoint to keep its networks")
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        if weights_only:
            return
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        if self.ada and state["ada"] is not None:
            self.ada.load_state_dict(state["ada"])
            self.augment.p.fill_(state["augment_p"])  # type: ignore[union-attr]  # ADA implies the pipe
        self.nimg, self.step = state["nimg"], state["step"]
        self.pl_mean.fill_(state["pl_mean"])
        self.sampler.state = SamplerState(**state["sampler"])
        self.latent_rng.set_state(state["latent_rng"])
        per_rank = state.get("rng_ranks")
        if per_rank and len(per_rank) == self.world:
            ck.set_rng_state(per_rank[self.rank])
        else:  # a run resumed on another number of processes: rank 0 continues, the others start their own
            ck.set_rng_state(state["rng"])
            if self.rank:
                torch.manual_seed(self.cfg.seed + 1_000_003 * self.rank + self.step)

    def start_from(self, nets: Networks) -> list[str]:
        """Transfer learning: take a network file's G, D and G_ema; counters, optimizers and ADA start afresh.
        Returns notes on what the file lacked: a best.pt has no G (it starts as G_ema) and no D (random)."""
        notes = []
        differences = arch_differences(self.describe_arch(), nets.arch)
        if differences:
            raise TransferError(f"the networks built for this run are not the file's: {', '.join(differences)}")
        if nets.D is None and self.frozen:
            raise TransferError("freeze_d keeps a pretrained discriminator's first layers, and this file has no "
                                "discriminator (a best.pt holds G_ema only): use a checkpoint or an imported "
                                "network, or freeze_d 0")
        for name, net, state in (("G_ema", self.G_ema, nets.G_ema), ("G", self.G, nets.G if nets.G is not None
                                                                       else nets.G_ema), ("D", self.D, nets.D)):
            if state is None:
                continue
            try:
                net.load_state_dict(state)
            except RuntimeError as e:  # strict: a missing, extra or misshapen tensor
                detail = " ".join(str(e).split())
                raise TransferError(f"the file's {name} does not fit the {self.cfg.arch} architecture built "
                                    f"from its own record: {detail[:300]}") from None
        if nets.G is None:
            notes.append("no G in the file: G starts as its G_ema")
        if nets.D is None:
            notes.append("no discriminator in the file: D starts from random weights")
        return notes

    def summary(self) -> dict:
        """What this run trains, for a log line: parameter counts and the settings the preset chose."""
        count = ops.count_parameters
        return {"arch": self.cfg.arch, "resolution": self.cfg.resolution, "G_params": count(self.G),
                "D_params": count(self.D), "batch": self.arch.batch, "processes": self.world,
                "batch_gpu": self.arch.batch // self.world // self.rounds, "lr": self.arch.lr,
                "d_lr": self.arch.d_lr,
                "loss": self.arch.loss, "r1_gamma": self.arch.r1_gamma if self.arch.lazy_r1 else 0.0,
                "ema_kimg": self.arch.ema_kimg, "ada_target": self.arch.ada_target, "amp": self.amp,
                "device": str(self.device), "freeze_d": self.cfg.freeze_d,
                "family_defaults": dict(self.arch.resolved)}

    def describe_arch(self) -> dict:
        """The architecture and where its growth is (a PGGAN's stage and alpha): what generation needs."""
        return {**self.arch.describe(), **self.arch.progress(self.nimg)}

    def snapshot(self) -> Path:
        state = self.state_dict()  # on every process: it gathers their RNG states
        path = ck.checkpoint_path(self.run_dir, self.nimg / 1000)
        if self.rank == 0:
            ck.save_checkpoint(self.run_dir, self.nimg / 1000, state)
            self.save_samples()
        dd.barrier()  # no process runs ahead of a checkpoint that is not on disk yet
        return path

    def save_samples(self, seeds: range = range(16)) -> Path:
        """RUN/samples/fakes-<kimg>.png: G_ema on fixed seeds, to watch training by eye."""
        from models.generate import grid, images_from_seeds

        rng = torch.get_rng_state()  # sampling must not move the training RNG (exact resume)
        images = images_from_seeds(self.G_ema, self.describe_arch(), list(seeds))
        torch.set_rng_state(rng)
        picture = grid(images)
        # models.atomic_file's rule: a PNG that is not a link or special file, whole or not at all
        return publish(RunDir(self.run_dir).sample_grid(self.nimg / 1000), lambda tmp: picture.save(tmp, "PNG"),
                       owned=is_png, what="a sample grid")

    # ------------------------------------------------------------------ steps
    def _share(self, x: torch.Tensor) -> torch.Tensor:
        """This process's part of a global batch."""
        return x[self.rank::self.world] if self.world > 1 else x

    def _reals(self) -> torch.Tensor:
        idx = self._share(self.sampler.take(self.arch.batch))
        reals = to_float(self.images[idx]).to(self.device)
        if self.cfg.xflip:
            reals = random_xflip(reals)
        return self.arch.prepare_reals(reals, self.nimg)

    def _aug(self, x: torch.Tensor) -> torch.Tensor:
        if self.augment is None:
            return x
        # In fp32, as the reference: under bf16 autocast the pipe's matrices come out bf16 and its index_put
        # of warped images into the float batch fails as soon as p > 0.
        with torch.autocast(self.device.type, enabled=False):
            return self.augment(x.float())

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def _D(self, images: torch.Tensor) -> torch.Tensor:
        """D's logits in fp32 (losses and penalties are computed in full precision), without augmentation."""
        return self.arch.discriminate(self.D, images, self.nimg).float()

    def _run_D(self, images: torch.Tensor) -> torch.Tensor:
        """D's logits on what the reference's run_D shows it: StyleGAN3-R's blur, then ADA's augmentation."""
        return self.arch.discriminate(self.D, images, self.nimg, augment=self._aug).float()

    def _phases(self) -> tuple[str, ...]:
        """The reference's training phases: with lazy regularization, a main and a reg phase, each its own
        optimizer step (G's only when path length is on), else one 'both' phase."""
        g = ("Gmain", "Greg") if self.arch.pl_weight > 0 else ("Gboth",)
        return g + (("Dmain", "Dreg") if self.arch.lazy_r1 else ("Dboth",))

    def _phase_latents(self) -> dict[str, torch.Tensor]:
        """One draw of [phases * batch, z_dim] per step, split per phase, as the reference's all_gen_z (from the
        run's own latent generator: every process draws the same global batch)."""
        phases = self._phases()
        z = torch.randn(len(phases) * self.arch.batch, self.arch.z_dim, generator=self.latent_rng)
        return {name: self._share(part).to(self.device) for name, part in zip(phases, z.split(self.arch.batch))}

    def _split(self, x: torch.Tensor) -> list[torch.Tensor]:
        """This process's share of a phase (its reals, its own latents) in rounds of batch_gpu (gradient
        accumulation), strided as the share itself is: round r takes images r, r + rounds, ... So the minibatch-std
        groups (group n % (batch / group)) are the whole batch's, and whole or in rounds a phase sees the same
        images."""
        return [x] if self.rounds == 1 else [x[r::self.rounds] for r in range(self.rounds)]

    def _optimizer_step(self, opt: torch.optim.Optimizer, net: torch.nn.Module,
                        round_losses: torch.Tensor | Iterable[torch.Tensor]) -> None:
        """One phase's step: the gradients of its rounds' losses added up (an iterable computes each round after
        the previous round's backward freed its graph; one tensor is the whole share in one pass), one all-reduce,
        then one Adam step. Each round's loss is a mean over the round, so 1/rounds of it makes the sum the whole
        batch's mean (NVIDIA adds the rounds' means, a gradient `rounds` times larger, which Adam undoes but for its
        eps). NaN and infinite gradients become 0 and +-1e5 before the step, as the reference's loop does, so one
        bad batch cannot turn Adam's moments (and with them every later step) into NaN."""
        opt.zero_grad(set_to_none=True)
        for loss in [round_losses] if isinstance(round_losses, torch.Tensor) else round_losses:
            (loss / self.rounds if self.rounds > 1 else loss).backward()
        dd.average_gradients(net.parameters())
        for p in net.parameters():
            if p.grad is not None:
                torch.nan_to_num_(p.grad, nan=0.0, posinf=1e5, neginf=-1e5)
        opt.step()

    def _d_step(self, reals: torch.Tensor, zs: dict[str, torch.Tensor] | None = None) -> dict:
        """D's phases: Dmain (logistic loss on fakes and reals), then on R1 steps Dreg (R1 alone, its own step);
        each in rounds of batch_gpu, with ADA's statistics from every round."""
        zs = zs if zs is not None else self._phase_latents()
        z = zs["Dmain"] if "Dmain" in zs else zs["Dboth"]
        do_r1 = self.arch.lazy_r1 and self.arch.r1_gamma > 0 and self.step % self.cfg.r1_interval == 0
        main: list[dict] = []
        main_signs: list[torch.Tensor] = []

        def main_rounds() -> Iterator[torch.Tensor]:
            for z_r, reals_r in zip(self._split(z), self._split(reals)):
                with self._autocast():
                    with torch.no_grad():
                        fakes = self.arch.generate(self.G, z_r, self.nimg,
                                                   update_stats=self.arch.stats_in_d_step).float()
                    fake_logits = self._run_D(fakes)  # fakes first, then reals: the reference's order of draws
                    real_logits = self._run_D(reals_r)
                    loss = self.d_loss_fn(real_logits, fake_logits)
                    main.append({"loss_D": loss.item(), "D_real": real_logits.mean().item(),
                                 "D_fake": fake_logits.mean().item()})
                    if self.arch.loss == "wgan":
                        loss = loss + self.cfg.gp_gamma * losses.gradient_penalty(self._D, reals_r, fakes)
                main_signs.append(real_logits.detach())
                yield loss

        self._optimizer_step(self.opt_D, self.D, main_rounds())
        if self.arch.stats_in_d_step:  # G's statistics moved per process: follow the global batch in G's step too
            dd.average_buffers(self.G)
        if self.ada:
            self.ada.accumulate(_cat(main_signs))
        stats = _mean(main)
        if do_r1:
            reg: list[dict] = []
            reg_signs: list[torch.Tensor] = []

            def reg_rounds() -> Iterator[torch.Tensor]:
                # R1 on the reals as they come, through the blur and the augmentation (the reference's Dreg), at
                # gamma/2 times the interval.
                for reals_r in self._split(reals):
                    with self._autocast():
                        real_in = reals_r.detach().requires_grad_(True)
                        real_logits = self._run_D(real_in)
                        r1 = losses.d_r1_penalty(real_logits, real_in)
                        reg.append({"r1": r1.item()})
                    reg_signs.append(real_logits.detach())
                    yield r1 * (self.arch.r1_gamma / 2) * self.cfg.r1_interval

            self._optimizer_step(self.opt_D, self.D, reg_rounds())
            stats.update(_mean(reg))
            if self.ada:  # the reference's ADA statistics count Dreg's pass over the reals too
                self.ada.accumulate(_cat(reg_signs))
        return stats

    def _g_step(self, zs: dict[str, torch.Tensor] | None = None) -> dict:
        """G's phases: Gmain (non-saturating loss), then on path-length steps Greg (the penalty alone, its own
        step, on its own latents); each in rounds of batch_gpu."""
        zs = zs if zs is not None else self._phase_latents()
        z = zs["Gmain"] if "Gmain" in zs else zs["Gboth"]
        main: list[dict] = []

        def main_rounds() -> Iterator[torch.Tensor]:
            for z_r in self._split(z):
                with self._autocast():
                    fakes = self.arch.generate(self.G, z_r, self.nimg,
                                               update_stats=not self.arch.stats_in_d_step).float()
                    loss = self.g_loss_fn(self._run_D(fakes))
                    main.append({"loss_G": loss.item()})
                yield loss

        self._optimizer_step(self.opt_G, self.G, main_rounds())
        stats = _mean(main)
        if "Greg" in zs and self.step % self.cfg.pl_interval == 0:
            reg: list[dict] = []

            def reg_rounds() -> Iterator[torch.Tensor]:
                for z_r in self._split(zs["Greg"]):
                    with self._autocast():
                        # Path-length regularization on the first half of each round (the reference's
                        # pl_batch_shrink 2, applied per round as its accumulate_gradients does); the running mean
                        # moves once per round too.
                        images, ws = self.arch.generate(self.G, z_r[:max(len(z_r) // 2, 1)], self.nimg,
                                                        update_stats=False, return_ws=True)
                        penalty, pl_mean = losses.path_length_penalty(images.float(), ws, self.pl_mean)
                        self.pl_mean.copy_(dd.mean_over_processes(pl_mean.detach()))
                        reg.append({"pl_penalty": penalty.item()})
                    yield penalty * self.arch.pl_weight * self.cfg.pl_interval

            self._optimizer_step(self.opt_G, self.G, reg_rounds())
            stats.update(_mean(reg))
        return stats

    @torch.no_grad()
    def _update_ema(self) -> None:
        """G_ema after a step, at the images seen before it (the reference's cur_nimg): its ramp-up starts at 0."""
        ema_nimg = self.arch.ema_kimg * 1000
        if self.arch.ema_rampup > 0:
            ema_nimg = min(ema_nimg, self.nimg * self.arch.ema_rampup)
        beta = 0.5 ** (self.arch.batch / max(ema_nimg, 1e-8))
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.copy_(p.lerp(p_ema, beta))
        dd.average_buffers(self.G)
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    def _entered_new_stage(self) -> bool:
        stage = lambda nimg: self.arch.progress(nimg).get("stage")  # noqa: E731  (None: no growth stages)
        return stage(self.nimg) != stage(self.nimg - self.arch.batch)

    def train(self, target_kimg: float, progress_fn: Callable[[dict], None] | None = None,
              abort_fn: Callable[[], bool] | None = None) -> dict:
        """Train until target_kimg, checkpointing every snapshot_kimg and at the end. Returns last stats."""
        target = round(target_kimg * 1000)
        every = max(1, round(self.cfg.snapshot_kimg * 1000))  # at least one image (TrainSettings bounds it too)
        stats: dict = {}
        t0, n0 = time.perf_counter(), self.nimg
        self.G.train(), self.D.train()
        while self.nimg < target:
            reals, zs = self._reals(), self._phase_latents()
            stats = self._g_step(zs)  # G's phases first, then D's, as the reference's loop
            stats.update(self._d_step(reals, zs))
            self._update_ema()
            self.nimg += self.arch.batch
            self.step += 1
            if self._entered_new_stage():
                # A new PGGAN resolution: fresh Adam moments, as the reference (reset_opt_for_new_lod).
                self.opt_G.state.clear()
                self.opt_D.state.clear()
            if self.ada and self.step % self.cfg.ada_interval == 0:
                self.augment.p.fill_(self.ada.update(float(self.augment.p)))  # type: ignore[union-attr]  # ADA implies the pipe
            elapsed = time.perf_counter() - t0
            stats.update(kimg=self.nimg / 1000, target_kimg=target / 1000,
                         augment_p=float(self.augment.p) if self.augment is not None else 0.0,
                         ada_r_t=self.ada.r_t if self.ada else None,
                         kimg_per_s=(self.nimg - n0) / 1000 / max(elapsed, 1e-9), **self.arch.progress(self.nimg))
            crossed = self.nimg // every > (self.nimg - self.arch.batch) // every
            aborting = dd.any_process(abort_fn is not None and abort_fn(), self.device)
            if crossed or self.nimg >= target or aborting:
                stats["checkpoint"] = str(self.snapshot())
            if progress_fn:
                progress_fn(dict(stats))
            if aborting:
                stats["aborted"] = True
                break
        return stats


def _adam(net: torch.nn.Module, lr: float, betas: tuple[float, float], lazy_interval: int) -> torch.optim.Adam:
    """Adam as the reference; with a regularizer every `lazy_interval` steps, lr and betas are scaled by
    c = interval / (interval + 1) so the regularized net moves as if regularized every step. Frozen
    parameters (Freeze-D) are left out."""
    c = lazy_interval / (lazy_interval + 1) if lazy_interval else 1.0
    return torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr * c, betas=(betas[0] ** c, betas[1] ** c), eps=1e-8)


def _rounds(share: int, batch_gpu: int | None, batch: int, world: int) -> int:
    """How many passes of batch_gpu images make a process's share of the batch (1: batch_gpu None, the whole share)."""
    if batch_gpu is None:
        return 1
    if batch_gpu < 1 or share % batch_gpu:
        processes = f"over {world} processes" if world > 1 else "in one process"
        raise ValueError(f"batch_gpu {batch_gpu} must divide each process's batch, {share} (batch {batch} "
                         f"{processes}): use a divisor of {share}, or leave it unset for the whole {share}")
    return share // batch_gpu


def _cat(rounds: list[torch.Tensor]) -> torch.Tensor:
    """A phase's D(real) logits, every round's."""
    return rounds[0] if len(rounds) == 1 else torch.cat(rounds)


def _mean(rounds: list[dict]) -> dict:
    """The step's statistics: each the mean over its rounds (equal-sized, so the whole batch's mean)."""
    return rounds[0] if len(rounds) == 1 else {k: sum(r[k] for r in rounds) / len(rounds) for k in rounds[0]}


def _plain(value):
    """Config values as weights_only-safe plain types (tuples become lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
