"""policy/: GRPO advantages, loss and rewards against TRL 1.16's GRPOTrainer, which runs here on the same
inputs through lightweight stand-ins for the trainer; and a toy bandit that GRPO must learn."""

import inspect
import math
import sys
import textwrap
import warnings
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from trl import GRPOConfig
from trl.trainer.grpo_trainer import GRPOTrainer
from trl.trainer.utils import get_callable_name, nanstd

from pigpt.policy import PolicyError, combine_rewards, group_advantages, grpo_loss, load_reward


# -- TRL stand-ins ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trl_env(tmp_path_factory):
    """A real GRPOConfig (TRL's defaults: use_bias_correction_kl, delta, steps_per_generation, ...) and a
    single-process CPU Accelerator, shared by the stand-in trainers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        args = GRPOConfig(output_dir=str(tmp_path_factory.mktemp("grpo")), report_to=[], bf16=False, use_cpu=True)
    return SimpleNamespace(args=args, accelerator=Accelerator(cpu=True))


def trl_loss(env, logps, old_logps, ref_logps, advantages, mask, loss_type, beta, epsilon, epsilon_high,
             max_completion_length):
    """TRL's GRPOTrainer._compute_loss on these tensors: (loss, its metrics as {name: float}).

    The stand-in carries exactly the attributes _compute_loss reads, set the way GRPOTrainer.__init__ sets
    them from a config; a SimpleNamespace raises AttributeError for any other, so a TRL that reads more fails
    here loudly. The model's forward is replaced by returning logps itself."""
    B, T = logps.shape
    metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer = SimpleNamespace(
        args=env.args, accelerator=env.accelerator, model=SimpleNamespace(training=True), _metrics=metrics,
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        loss_type=loss_type, beta=beta, epsilon_low=epsilon,
        epsilon_high=epsilon_high if epsilon_high is not None else epsilon,
        max_completion_length=max_completion_length, current_gradient_accumulation_steps=1,
        importance_sampling_level=env.args.importance_sampling_level,
        top_entropy_quantile=env.args.top_entropy_quantile,
        off_policy_mask_threshold=env.args.off_policy_mask_threshold,
        use_vllm=env.args.use_vllm, vllm_importance_sampling_correction=env.args.vllm_importance_sampling_correction,
        _entropy_bonus_enabled=env.args.entropy_coef != 0.0 or env.args.use_adaptive_entropy,
        aux_loss_enabled=False,  # only MoE models have a router loss
    )
    inputs = {
        "prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask,
        "advantages": advantages, "num_items_in_batch": mask.sum(),
    }
    if old_logps is not None:
        inputs["old_per_token_logps"] = old_logps
    if ref_logps is not None:
        inputs["ref_per_token_logps"] = ref_logps
    loss = GRPOTrainer._compute_loss(trainer, None, inputs)
    return loss, {k: v[-1] for k, v in metrics["train"].items()}


TRL_ADVANTAGES = (  # the first and last line of the advantage block in _generate_and_score_completions
    "unscorable_mask = torch.isnan(rewards_per_func).all(dim=1)",
    "advantages = torch.nan_to_num(advantages, nan=0.0)",
)


def trl_advantages(rewards_per_func, weights, num_generations, scale_rewards):
    """TRL's rewards (N,) and advantages (N,) from per-function rewards (N, F), by running its own lines.

    The computation sits inline in GRPOTrainer._generate_and_score_completions, 600 lines that also tokenize,
    generate and score with models, so it can't be called alone, and stubbing all of that would test the stubs.
    Instead the block between the two anchor lines above is cut out of the installed source with
    inspect.getsource and executed with TRL's nanstd; a TRL where the anchors moved fails here, it doesn't
    silently compare against something else."""
    lines = textwrap.dedent(inspect.getsource(GRPOTrainer._generate_and_score_completions)).splitlines()
    stripped = [line.strip() for line in lines]
    start, end = (stripped.index(anchor) for anchor in TRL_ADVANTAGES)  # ValueError if an anchor is gone
    block = textwrap.dedent("\n".join(lines[start:end + 1]))
    trainer = SimpleNamespace(multi_objective_aggregation="sum_then_normalize", reward_weights=weights,
                              scale_rewards=scale_rewards)
    scope = {"torch": torch, "nanstd": nanstd, "self": trainer, "rewards_per_func": rewards_per_func,
             "num_generations": num_generations, "device": torch.device("cpu")}
    exec(block, scope)
    return scope["rewards"], scope["advantages"]


def trl_rewards_per_func(env, reward_funcs, prompts, completions):
    """TRL's GRPOTrainer._calculate_rewards for callables: how it calls them and turns None into NaN."""
    trainer = SimpleNamespace(
        args=env.args, accelerator=env.accelerator, state=SimpleNamespace(global_step=0), environments=None,
        reward_funcs=reward_funcs, reward_processing_classes=[None] * len(reward_funcs),
        reward_func_names=[get_callable_name(f) for f in reward_funcs],
        _log_completion_extra=lambda *a: None, _log_metric=lambda *a: None)
    inputs = [{"prompt": p, "completion": c} for p, c in zip(prompts, completions)]
    return GRPOTrainer._calculate_rewards(trainer, inputs, prompts, completions, [[0]] * len(prompts))


# -- grpo_loss against TRL ---------------------------------------------------------------------------------------

B, T = 6, 7


def loss_inputs(policy: str, beta: float):
    """Per-token tensors with a ragged mask (one row fully masked, as mask_truncated_completions makes it),
    advantages of both signs and a zero, and for "off" old log-probs whose ratios leave the clip range on
    both sides."""
    g = torch.Generator().manual_seed(0)
    logps = -torch.rand(B, T, generator=g) * 3  # (B, T)
    lengths = torch.tensor([7, 5, 1, 0, 6, 3])
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()  # (B, T)
    advantages = torch.tensor([1.3, -0.7, 0.4, 0.9, -1.5, 0.0])  # (B,)
    old = {"on_none": None, "on_equal": logps.clone(),
           "off": logps + torch.randn(B, T, generator=g) * 0.4}[policy]
    ref = logps + torch.randn(B, T, generator=g) * 0.3 if beta else None
    return logps, old, ref, advantages, mask


@pytest.mark.parametrize("epsilon_high", [None, 0.28])
@pytest.mark.parametrize("policy", ["on_none", "on_equal", "off"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_grpo_loss_matches_trl(trl_env, loss_type, beta, policy, epsilon_high):
    logps, old, ref, adv, mask = loss_inputs(policy, beta)
    ours_in = logps.clone().requires_grad_(True)
    theirs_in = logps.clone().requires_grad_(True)
    loss, metrics = grpo_loss(ours_in, old, ref, adv, mask, loss_type=loss_type, beta=beta,
                              epsilon_high=epsilon_high, max_completion_length=10)
    ref_loss, ref_metrics = trl_loss(trl_env, theirs_in, old, ref, adv, mask, loss_type, beta, 0.2, epsilon_high, 10)
    loss.backward()
    ref_loss.backward()
    assert loss.dim() == 0 and abs(loss.item() - ref_loss.item()) <= 1e-6
    assert (ours_in.grad - theirs_in.grad).abs().max().item() <= 1e-6
    assert ours_in.grad[mask == 0].abs().max() == 0  # padding gets no gradient
    if policy == "off":  # the case must exercise both clips, or it proves nothing about them
        assert ref_metrics["clip_ratio/low_mean"] > 0 and ref_metrics["clip_ratio/high_mean"] > 0
    assert ("kl" in metrics) == (beta > 0)
    for name, ref_value in ref_metrics.items():
        if name != "entropy":  # TRL logs the model's entropy, which a loss over log-probs can't know
            assert metrics[name] == pytest.approx(ref_value, abs=1e-6), name
    assert metrics["clip_ratio"] == metrics["clip_ratio/region_mean"]
    assert all(isinstance(v, float) for v in metrics.values())


def test_dr_grpo_default_length_is_T(trl_env):
    logps, old, _, adv, mask = loss_inputs("off", 0.0)
    loss, _ = grpo_loss(logps, old, None, adv, mask, loss_type="dr_grpo")
    ref_loss, _ = trl_loss(trl_env, logps, old, None, adv, mask, "dr_grpo", 0.0, 0.2, None, T)
    assert abs(loss.item() - ref_loss.item()) <= 1e-6


def test_dapo_normalises_by_the_generation_batch_tokens():
    """For micro-batches of a larger generation batch, "dapo" divides by the whole batch's token count."""
    logps, old, _, adv, mask = loss_inputs("off", 0.0)
    full, _ = grpo_loss(logps, old, None, adv, mask, loss_type="dapo")
    halves = [grpo_loss(logps[s], old[s], None, adv[s], mask[s], loss_type="dapo", num_items_in_batch=mask.sum())[0]
              for s in (slice(0, 3), slice(3, 6))]
    assert abs((halves[0] + halves[1]).item() - full.item()) <= 1e-6


@pytest.mark.parametrize("kwargs, message", [
    (dict(loss_type="ppo"), "unknown loss_type 'ppo'"),
    (dict(beta=0.1), "needs ref_logps"),
    (dict(beta=-0.1), "beta must be >= 0"),
    (dict(epsilon=0.0), "epsilon must be > 0"),
    (dict(epsilon_high=-0.1), "epsilon_high must be > 0"),
    (dict(loss_type="dr_grpo", max_completion_length=0), "max_completion_length must be a positive int"),
])
def test_grpo_loss_bad_arguments(kwargs, message):
    logps, _, _, adv, mask = loss_inputs("on_none", 0.0)
    with pytest.raises(PolicyError, match=message):
        grpo_loss(logps, None, None, adv, mask, **kwargs)


def test_grpo_loss_bad_shapes():
    logps, _, _, adv, mask = loss_inputs("on_none", 0.0)
    with pytest.raises(PolicyError, match=r"old_logps has shape \(6, 6\) but logps has \(6, 7\)"):
        grpo_loss(logps, logps[:, :6], None, adv, mask)
    with pytest.raises(PolicyError, match=r"mask has shape \(5, 7\)"):
        grpo_loss(logps, None, None, adv, mask[:5])
    with pytest.raises(PolicyError, match=r"advantages must be \[B\] = \[6\]"):
        grpo_loss(logps, None, None, adv[:, None], mask)
    with pytest.raises(PolicyError, match=r"logps must be a float tensor \[B, T\]"):
        grpo_loss(logps[0], None, None, adv, mask)
    with pytest.raises(PolicyError, match="mask must hold only 0 and 1"):
        grpo_loss(logps, None, None, adv, mask * 2)


# -- group_advantages against TRL --------------------------------------------------------------------------------

def scripted(name, values):
    """A reward function returning fixed values (None included), named for TRL's logs."""
    def reward(prompts, completions, **kwargs):
        return list(values)
    reward.__name__ = name
    return reward


# 4 prompts x G=4, two reward functions. Group 0: ordinary; group 1: every total equal (zero variance);
# group 2: one completion neither function scores, one scored by the second only; group 3: a single scorable
# completion (NaN std in TRL, advantage 0).
REWARDS_A = [0.1, 0.9, 0.4, 0.5,   1.0, 1.0, 1.0, 1.0,   0.2, None, None, 0.7,   None, None, 0.3, None]
REWARDS_B = [1.0, 0.0, 0.0, 2.0,   0.0, 0.0, 0.0, 0.0,   0.5, None, 0.6, 0.1,   None, None, 0.0, None]
WEIGHTS = [1.0, 0.5]


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_rewards_and_advantages_match_trl(trl_env, scale):
    fns = [scripted("a", REWARDS_A), scripted("b", REWARDS_B)]
    prompts, completions = ["p"] * 16, ["c"] * 16
    per_func, total = combine_rewards(fns, WEIGHTS)(prompts, completions)
    ref_per_func = trl_rewards_per_func(trl_env, fns, prompts, completions)
    assert torch.equal(torch.isnan(per_func), torch.isnan(ref_per_func))
    assert torch.equal(per_func.nan_to_num(-7.0), ref_per_func.nan_to_num(-7.0))
    ref_total, ref_adv = trl_advantages(ref_per_func, torch.tensor(WEIGHTS), 4, scale)
    assert torch.isnan(total[9]) and torch.equal(total.nan_to_num(-7.0), ref_total.nan_to_num(-7.0))
    adv = group_advantages(total, 4, scale)
    assert (adv - ref_adv).abs().max().item() <= 1e-6
    assert adv[9] == 0 and (adv[12:] == 0).all()  # unscorable, and a lone scorable completion
    if scale != "batch":  # a zero-variance group carries no signal (under "batch" its mean is still 0 off)
        assert (adv[4:8] == 0).all()


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("G", [1, 3])
def test_group_advantages_single_function_matches_trl(scale, G):
    rewards = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 2.0, -1.0, 0.5, 3.0])  # (9,): 9 / G prompts
    _, ref_adv = trl_advantages(rewards[:, None], torch.ones(1), G, scale)
    adv = group_advantages(rewards, G, scale)
    assert (adv - ref_adv).abs().max().item() <= 1e-6
    if G == 1 and scale != "batch":
        assert (adv == 0).all()


def test_group_advantages_bad_arguments():
    with pytest.raises(PolicyError, match="don't split into groups of 4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(PolicyError, match="unknown scale 'mean'"):
        group_advantages(torch.zeros(8), 4, scale="mean")
    with pytest.raises(PolicyError, match="group_size must be a positive int"):
        group_advantages(torch.zeros(8), 0)
    with pytest.raises(PolicyError, match="1-D float tensor"):
        group_advantages(torch.zeros(2, 4), 4)


# -- rewards -----------------------------------------------------------------------------------------------------

def test_python_compiles(tmp_path):
    reward = load_reward("python_compiles")
    flag = tmp_path / "ran"
    prompts = ["def f(x):", "def f(x):", "", "", "x = '''", ""]
    completions = ["\n    return x\n", " return (", "return 1\n",  # top-level return: parses, doesn't compile
                   f"open({str(flag)!r}, 'w')\n", "\n'''\n", "y = x is 1\n"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a SyntaxWarning leaking out would turn into an error here
        assert reward(prompts, completions) == [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert not flag.exists()  # judged, never run
    assert reward.__name__ == "python_compiles" == get_callable_name(reward)


def test_contains_and_regex():
    completions = ["return x", "x: int = 1", "nothing"]
    assert load_reward("contains:return")([""] * 3, completions) == [1.0, 0.0, 0.0]
    assert load_reward("contains:: int")([""] * 3, completions) == [0.0, 1.0, 0.0]  # the word may hold ':'
    assert load_reward(r"regex:^\w+: \w+")([""] * 3, completions) == [0.0, 1.0, 0.0]
    assert load_reward("regex:ret|thing")([""] * 3, completions) == [1.0, 0.0, 1.0]
    assert load_reward("regex:a+").name == "regex:a+"


REWARD_FILE = '''
def length_reward(completions, **kwargs):  # TRL's usual signature: prompts arrives as a keyword
    return [float(len(c)) for c in completions]

def echo_kwargs(prompts, completions, **kwargs):
    return [float(kwargs["bonus"][i]) for i in range(len(completions))]
'''


def test_file_and_module_rewards(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(REWARD_FILE)
    from_file = load_reward(f"{tmp_path}/my_rewards.py:length_reward")
    assert from_file(["p", "q"], ["ab", "abcd"]) == [2.0, 4.0]
    assert from_file.name == f"{tmp_path}/my_rewards.py:length_reward"
    monkeypatch.syspath_prepend(str(tmp_path))
    from_module = load_reward("my_rewards:echo_kwargs")
    assert from_module(["p", "q"], ["a", "b"], bonus=[3, 4]) == [3.0, 4.0]  # extra columns pass through
    assert load_reward("os.path:basename").fn is sys.modules["os.path"].basename  # dotted module names


def test_our_rewards_inside_trl(trl_env):
    """TRL's own _calculate_rewards calls our loaded rewards as it calls its own, and logs their spec names."""
    fns = [load_reward("contains:x"), load_reward("regex:y$")]
    ref = trl_rewards_per_func(trl_env, fns, ["", ""], ["x", "y"])
    assert ref.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert [get_callable_name(f) for f in fns] == ["contains:x", "regex:y$"]


def test_combined_weights_and_all_none():
    per_func, total = combine_rewards(
        ["contains:a", "contains:b", scripted("maybe", [None, 2.0, None])], [2.0, -1.0, 0.25]
    )(["", "", ""], ["ab", "b", ""])
    assert per_func[:, :2].tolist() == [[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]
    assert math.isnan(per_func[0, 2]) and per_func[1, 2] == 2.0
    assert total.tolist() == [1.0, -0.5, 0.0]  # None skipped: 2 - 1; -1 + 0.5; zeros still count as scored
    _, total = combine_rewards([scripted("never", [None, 1.0])])(["", ""], ["", ""])
    assert math.isnan(total[0]) and total[1] == 1.0  # nothing applied: NaN, not a reward of 0


@pytest.mark.parametrize("spec, message", [
    ("nope", "unknown reward 'nope': use python_compiles, contains:WORD, regex:PATTERN, "
             "path/to/file.py:function or module:function"),
    ("contains:", "has no word"),
    ("regex:", "has no pattern"),
    ("regex:(ab", r"'\(ab' is not a valid regular expression"),
    ("missing_dir/x.py:f", "no file 'missing_dir/x.py'"),
    ("pigpt_no_such_module:f", "no module named 'pigpt_no_such_module'"),
    ("os.path:no_such_function", "has no 'no_such_function'"),
    ("os.path:sep", "'sep' is a str, not a function"),
    ("", "must be a non-empty string"),
])
def test_bad_reward_specs(spec, message):
    with pytest.raises(PolicyError, match=message):
        load_reward(spec)


def test_bad_reward_files(tmp_path):
    (tmp_path / "broken.py").write_text("raise KeyError('boom')\n")
    with pytest.raises(PolicyError, match="broken.py' raised KeyError: 'boom'"):
        load_reward(f"{tmp_path}/broken.py:f")
    (tmp_path / "ok.py").write_text("def g(completions, **kwargs):\n    return []\n")
    with pytest.raises(PolicyError, match=r"has no 'f' \(its functions: g\)"):
        load_reward(f"{tmp_path}/ok.py:f")


def raising(prompts, completions, **kwargs):
    return {}["missing"]


@pytest.mark.parametrize("fn, message", [
    (raising, "reward 'raising' raised KeyError: 'missing'"),
    (scripted("short", [1.0]), "reward 'short' returned 1 rewards for 2 completions"),
    (scripted("text", [1.0, "good"]), "reward 'text' returned a str .'good'. for completion 1"),
    (scripted("nan", [float("nan"), 1.0]), "reward 'nan' returned NaN for completion 0; return None"),
    (scripted("inf", [1.0, float("inf")]), "reward 'inf' returned inf for completion 1; rewards must be finite"),
    (lambda prompts, completions, **kw: 1.0, "returned a float; it must return a list"),
])
def test_bad_reward_outputs(fn, message):
    with pytest.raises(PolicyError, match=message):
        combine_rewards([fn])(["", ""], ["", ""])


def test_contains_reward_that_raises_is_named():
    with pytest.raises(PolicyError, match=r"reward 'contains:x' raised TypeError"):
        combine_rewards(["contains:x"])(["", ""], ["ok", None])


def test_bad_weights():
    with pytest.raises(PolicyError, match=r"1 weights for 2 reward functions \(contains:a, contains:b\)"):
        combine_rewards(["contains:a", "contains:b"], [1.0])
    with pytest.raises(PolicyError, match="weight of reward 'contains:a' must be a finite number"):
        combine_rewards(["contains:a"], [float("nan")])


# -- a bandit GRPO must learn ------------------------------------------------------------------------------------

BANDIT_STEPS = 60  # with Adam(lr=0.1), seeds 0-9 reach p(target) > 0.9 for both prompts in 28-31 steps


def bandit_steps_to_learn(seed: int, sign: float = 1.0) -> int | None:
    """Two prompts, each with its own logits over 8 one-token completions and its own rewarded token; G = 8
    samples per prompt a step. The step at which both targets' probabilities exceed 0.9, or None."""
    P, V, G = 2, 8, 8
    targets = torch.tensor([3, 5])
    gen = torch.Generator().manual_seed(seed)
    logits = torch.zeros(P, V, requires_grad=True)  # (P, V): the whole policy
    opt = torch.optim.Adam([logits], lr=0.1)
    for step in range(1, BANDIT_STEPS + 1):
        actions = torch.multinomial(logits.detach().softmax(-1), G, replacement=True, generator=gen)  # (P, G)
        rewards = (actions == targets[:, None]).float().flatten()  # (P*G,), prompt-major
        advantages = sign * group_advantages(rewards, G)  # (P*G,)
        logps = logits.log_softmax(-1).gather(1, actions).reshape(P * G, 1)  # (P*G, 1)
        loss, _ = grpo_loss(logps, None, None, advantages, torch.ones_like(logps))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (logits.softmax(-1)[torch.arange(P), targets] > 0.9).all():
            return step
    return None


@pytest.mark.parametrize("seed", range(5))
def test_bandit_learns_the_rewarded_token(seed):
    assert bandit_steps_to_learn(seed) is not None


@pytest.mark.parametrize("seed", range(2))
def test_bandit_with_flipped_advantages_does_not(seed):
    assert bandit_steps_to_learn(seed, sign=-1.0) is None
