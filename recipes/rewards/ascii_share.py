"""A reward for recipes/grpo_tiny.yaml: the share of a completion's characters that are ASCII.

The embedded model is random-initialised and samples its bilingual vocabulary almost uniformly, so about
half of what it writes is Latin script: a dense signal it can learn from in a few steps (to write in
Latin script). A reward function gets the prompts, the decoded completions, their token ids and the
row's columns (here `answer`) as keywords and returns one float per completion.
"""


def ascii_share(completions, **kwargs):
    return [sum(c.isascii() for c in text) / len(text) if text else 0.0 for text in completions]
