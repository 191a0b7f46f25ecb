"""Toy rewards for the GRPO learning test: they vary even for a random model, so GRPO has a
signal to follow (a random model scores 0 on correctness everywhere, which gives zero gradients).

Imported by dotted path from the command line: `--reward_funcs tests.grpo_toy_rewards:digit_share`.
"""

from rewards.math import completion_text


def digit_share(completions, **kwargs):
    """Fraction of the completion's characters that are digits (0.0 for an empty completion)."""
    scores = []
    for completion in completions:
        text = completion_text(completion)
        scores.append(sum(ch.isdigit() for ch in text) / len(text) if text else 0.0)
    return scores
