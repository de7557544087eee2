"""sim/finetune.py end to end on the real simulator at a tiny scale: resume reproduces the next
iteration bit for bit, and the checkpoint (what evaluation and deployment load) holds the
fine-tuned weights, not the base."""
import json
from pathlib import Path

import pytest
import torch

from policy.checkpoint import load_checkpoint, load_policy
from tests.conftest import compose_config

STATE_CKPT = "checkpoints/one_leg_state_bc.pt"


def ft_cfg(out, *extra):
    return compose_config("finetune", [
        f"out_dir={out}", "env.n_envs=4", "env.n_workers=0", "train.actor_needs_reward=false", "train.n_steps=6", "train.iterations=3",
        "train.save_every=1", "train.keep_every=0", "eval.every=0", "ppo.batch_size=20", "ppo.update_epochs=2",
        "ppo.critic_warmup=1", "ppo.actor_warmup=0", "ppo.actor_lr=1e-4", "critic.hidden=64", "critic.blocks=1",
        "device=cpu", *extra])


def run(cfg):
    from sim.finetune import Finetuner

    ft = Finetuner(cfg)
    out = ft.train()
    return ft, out


@pytest.fixture(scope="module")
def straight_and_resumed(tmp_path_factory):
    torch.set_num_threads(1)
    a = tmp_path_factory.mktemp("straight")
    b = tmp_path_factory.mktemp("resumed")
    ft_a, _ = run(ft_cfg(a))
    run(ft_cfg(b, "train.chunk_iterations=2"))
    ft_b, _ = run(ft_cfg(b))  # resumes at iteration 2 and runs the third
    return a, b, ft_a, ft_b


def rows(path):
    return [json.loads(line) for line in open(path / "history.jsonl")]


def test_resume_reproduces_the_next_iteration_bit_for_bit(straight_and_resumed):
    a, b, ft_a, ft_b = straight_and_resumed
    assert ft_a.iteration == ft_b.iteration == 3
    pa, pb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    for k, v in pa["model"].items():
        assert torch.equal(v, pb["model"][k]), k
    for k, v in pa["train"]["agent"]["critic"].items():
        assert torch.equal(v, pb["train"]["agent"]["critic"][k]), k
    ra, rb = rows(a), rows(b)
    assert len(ra) == len(rb) == 3
    for x, y in zip(ra, rb):  # same episodes, losses and statistics (timings aside)
        x.pop("time"), y.pop("time"), x.pop("env_steps_per_s"), y.pop("env_steps_per_s")
        x["rollout"].pop("sim_s"), y["rollout"].pop("sim_s"), x["rollout"].pop("policy_s"), y["rollout"].pop("policy_s")
        assert x == y
    assert pa["train"]["seed_next"] == pb["train"]["seed_next"] > 1_000_000


def test_checkpoint_holds_the_fine_tuned_weights_and_loads_as_a_policy(straight_and_resumed):
    a, _, ft_a, _ = straight_and_resumed
    base = load_policy(STATE_CKPT)
    tuned = load_policy(a / "last.pt")
    changed = [k for k, v in tuned.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
    assert any(k.startswith("denoiser.") for k in changed)  # the actor moved (critic warmup was 1 of 3)
    for k, v in ft_a.agent.actor.state_dict().items():  # what was trained is what was saved
        assert torch.equal(v, tuned.state_dict()[k])
    assert tuned.schema == base.schema
    pose = [0.5, 0.0, 0.2, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    obs = {"state": torch.tensor([pose + [0.05]] * 2)[None], "parts": torch.tensor([pose * 2] * 2)[None]}
    noise = torch.randn(1, 8, 10, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(torch.as_tensor(tuned.act(obs, noise=noise, eta=0.0)),
                              torch.as_tensor(base.act(obs, noise=noise, eta=0.0)))


def test_iteration_logs_the_diagnostics(straight_and_resumed):
    a = straight_and_resumed[0]
    last = rows(a)[-1]
    for key in ("policy_loss", "value_loss", "approx_kl", "clipfrac", "explained_variance", "actor_lr"):
        assert key in last["update"]
    assert last["logprob_recompute_max_err"] < 1e-5
    # equal to 1e-5 (exactly, in fact) from 4 rows on; batches of 1-2 rows round float32 GEMMs differently,
    # which the t=99 step amplifies by 1/sqrt(alpha_bar) to ~5e-5 (docs/finetune.md)
    assert last["rollout"]["env_steps"] == 4 * 6 * 4  # no episode ends in 24 steps: every action executed
    assert (a / "tb").is_dir() and (a / "curves.png").is_file()


def test_a_fresh_run_does_not_resume_a_diffusion_pretraining_checkpoint(tmp_path):
    from policy.checkpoint import CheckpointError
    import shutil

    shutil.copy(STATE_CKPT, tmp_path / "last.pt")
    from sim.finetune import Finetuner

    with pytest.raises(CheckpointError, match="not a fine-tuning checkpoint"):
        Finetuner(ft_cfg(tmp_path))


def test_two_gloo_ranks_keep_identical_weights(tmp_path):
    """torchrun with 2 CPU ranks: own envs and seeds per rank, averaged gradients, identical
    weights after the updates (checked by the run itself at every save)."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    overrides = ["env.n_envs=2", "env.n_workers=0", "train.actor_needs_reward=false", "train.n_steps=4", "train.iterations=2", "eval.every=0",
                 "ppo.batch_size=20", "ppo.update_epochs=1", "ppo.critic_warmup=0", "ppo.actor_warmup=0",
                 "critic.hidden=32", "critic.blocks=1", "device=cpu", f"out_dir={tmp_path}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={port}", "sim/finetune.py", *overrides],
                          capture_output=True, text=True, timeout=600, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert out.count("all 2 ranks hold identical weights (iteration 2)") >= 1
    last = [json.loads(line) for line in open(tmp_path / "history.jsonl")][-1]
    assert last["env_steps"] == 2 * 2 * 2 * 4 * 4  # 2 iterations x 2 ranks x 2 envs x 4 chunks x 4 actions
    tuned, base = load_policy(tmp_path / "last.pt"), load_policy(STATE_CKPT)
    assert any(not torch.equal(v, base.state_dict()[k]) for k, v in tuned.state_dict().items())


@pytest.mark.slow
def test_dppo_raises_a_weak_policy_on_a_cheap_start_state_setting(tmp_path):
    """The shipped state BC policy, started from recorded thread-engaged states with 150 steps
    to finish, screws too slowly (15 % on 48 fixed seeds). Twenty DPPO iterations (~24k env
    steps, ~3 minutes on 2 cores) must raise that by a clear margin. Ten were measured 15 -> 33 %
    on one machine and 15 -> 17 % on another (the same code: contact-rich episodes are chaotic in
    the CPU's float arithmetic), so the test runs 20 (measured 15 -> 44 % and 15 -> 23 % on those
    two machines) and asks for at least 3 more successes of 48 (a broken update stays at ~15 %
    or falls).

    Not a reliable guard (measured 2026-12-04, docs/results.md "The thread redesign and its
    mend"): its outcome is decided by the seed, on either thread design: seed 0 gives 17 -> 46 %
    on the old design and 21 -> 2 % on today's, seed 1 gives 17 -> 15 % and 21 -> 33 %. Eight
    episodes per iteration with one or two successes make the update direction mostly noise. It
    stays out of the default run, which keeps the update-direction test of
    tests/test_dppo_maths.py; run it with `pytest -m slow -k weak_policy`. A discriminating
    version needs more episodes per update (the batched backend on a GPU)."""
    cfg = compose_config("finetune", [
        f"out_dir={tmp_path}", "task.start_states=start_states/one_leg_low_thread_engaged.npz",
        "task.max_episode_steps=150", "env.n_envs=8", "env.n_workers=2", "train.n_steps=38", "train.iterations=20",
        "ppo.actor_warmup=0", "ppo.critic_warmup=2", "ppo.batch_size=760", "eval.every=20", "eval.episodes=48",
        "eval.n_envs=16", "eval.reset=train", "eval.video=false", "device=cpu"])
    ft, out = run(cfg)
    evals = [h["eval"]["success_rate"] for h in ft.history if "eval" in h]
    assert len(evals) == 2
    before, after = evals
    assert before < 0.25 and after >= before + 0.06, (before, after)


def test_finetune_yaml_matches_the_typed_config_field_for_field():
    """configs/finetune.yaml holds every FinetuneConfig field and nothing else (no dead keys),
    and a typo is an error naming its dotted path."""
    import dataclasses

    from omegaconf import OmegaConf, open_dict

    from sim.finetune import SIM_GROUPS, FinetuneConfig, typed_config

    def keys_of(cls, prefix=""):
        out = set()
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            out |= keys_of(type(default), f"{prefix}{f.name}.") if dataclasses.is_dataclass(default) else {prefix + f.name}
        return out

    def keys_in(d, prefix=""):
        out = set()
        for k, v in d.items():
            out |= keys_in(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
        return out

    cfg = compose_config("finetune", [])
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert keys_in({k: v for k, v in plain.items() if k not in SIM_GROUPS}) == keys_of(FinetuneConfig)
    with open_dict(cfg):
        cfg.ppo.clip_coef = 0.2
    with pytest.raises(Exception, match="ppo.clip_coef"):
        typed_config(cfg)


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("preset", sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml")))
def test_every_experiment_preset_is_a_valid_typed_config(preset):
    """A preset's typo'd key or missing start-state file would otherwise surface only when
    someone runs that preset, minutes into set-up."""
    from sim.finetune import typed_config

    cfg = compose_config("finetune", [f"experiment={preset}"])
    typed = typed_config(cfg)
    assert typed.out_dir and typed.train.iterations > 0
    if cfg.task.start_states:
        assert (REPO / cfg.task.start_states).is_file(), cfg.task.start_states


PIXEL_CKPT = "checkpoints/one_leg_pixel_bc.pt"


def test_frozen_camera_encoders_store_features_and_train_only_the_rest(tmp_path):
    """train.freeze_image_encoders: the rollout stores each observation's camera features (no
    images: the privileged critic reads none), the recomputed log-probs match the sampled ones,
    the ViTs stay the pretrained ones while the denoiser moves, and stored features condition
    the policy exactly as the images do in evaluation and deployment."""
    torch.set_num_threads(1)
    ft, _ = run(compose_config("finetune", [
        f"out_dir={tmp_path}", "obs=pixel", "train.freeze_image_encoders=true", "env.n_envs=4", "env.n_workers=0",
        "train.actor_needs_reward=false", "train.n_steps=4", "train.iterations=2", "train.save_every=1",
        "train.keep_every=0", "eval.every=0", "ppo.batch_size=20", "ppo.update_epochs=1", "ppo.critic_warmup=0",
        "ppo.actor_warmup=0", "ppo.actor_lr=1e-4", "critic.hidden=64", "critic.blocks=1", "device=cpu"]))
    specs = ft.buffer_specs
    assert {"feat/front", "feat/wrist"} <= set(specs) and not any(k.startswith("rgb/") for k in specs)
    assert specs["feat/front"].shape == (2, 128) and specs["feat/front"].dtype == torch.float32
    assert ft.env_obs_specs["rgb/front"].dtype == torch.uint8  # the reference layout's yardstick keeps images
    # 2.3e-5 here, exactly what the same run gives with the ViTs in the loop (float32 GEMMs of a
    # 4-row sampling batch against the 16-row recomputation, amplified by the t=99 step): the
    # stored features add no error (both passes read them; that they are evaluation's features
    # is the last check below, which fails if they are stored augmented).
    assert all(r["logprob_recompute_max_err"] < 5e-5 for r in rows(tmp_path))
    base, tuned = load_policy(PIXEL_CKPT), load_policy(tmp_path / "last.pt")
    sb, st = base.state_dict(), tuned.state_dict()
    assert all(torch.equal(v, sb[k]) for k, v in st.items() if k.startswith("encoder.vits."))
    assert any(not torch.equal(v, sb[k]) for k, v in st.items() if k.startswith("denoiser."))
    g = torch.Generator().manual_seed(0)
    obs = {"state": torch.randn(3, 2, 10, generator=g),
           "rgb/front": torch.randint(0, 256, (3, 2, 96, 96, 3), dtype=torch.uint8, generator=g),
           "rgb/wrist": torch.randint(0, 256, (3, 2, 96, 96, 3), dtype=torch.uint8, generator=g)}
    agent = ft.agent
    agent.actor.eval()
    feats = agent.input_features(obs)
    with torch.no_grad():
        from_images = agent.actor.condition(obs)
        from_features = agent.actor.condition({"state": obs["state"], **feats})
    assert torch.allclose(from_images, from_features, atol=1e-6)


def test_freezing_camera_encoders_of_a_state_policy_is_refused(tmp_path):
    from sim.finetune import Finetuner

    with pytest.raises(SystemExit, match="needs a pixel policy"):
        Finetuner(ft_cfg(tmp_path, "train.freeze_image_encoders=true"))
