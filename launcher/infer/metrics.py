"""BLEU-4 and ROUGE-1/2/L of predictions against labels, computed the way LLaMA-Factory's
ComputeSimilarity does (src/llamafactory/train/sft/metric.py), so numbers compare with its
predict_results.json: both texts segmented with jieba (words for English, jieba words for
Chinese); ROUGE F-scores from rouge-chinese over the space-joined segments (0 when either side is
empty); BLEU-4 from nltk's sentence_bleu over the characters with smoothing method 3; each score
x100, rounded to 4 places per example, then averaged (the mean itself not rounded). nltk is what LF uses, so it is used here
(sacrebleu's corpus BLEU gives other numbers)."""

from __future__ import annotations

import logging

from launcher.errors import MetricsUnavailable

NAMES = ("bleu-4", "rouge-1", "rouge-2", "rouge-l")


def _libraries():
    try:
        import jieba
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
        from rouge_chinese import Rouge
    except ImportError as err:
        raise MetricsUnavailable(
            f"BLEU/ROUGE need {err.name}. Fix: pip install 'llm-launcher[eval]' (nltk, rouge-chinese, jieba)"
        ) from None
    jieba.setLogLevel(logging.WARNING)
    return jieba, sentence_bleu, SmoothingFunction().method3, Rouge()


def example_scores(prediction: str, label: str, libraries=None) -> dict[str, float]:
    """One example's {bleu-4, rouge-1, rouge-2, rouge-l}, x100."""
    jieba, sentence_bleu, smoothing, rouge = libraries or _libraries()
    hypothesis, reference = " ".join(jieba.cut(prediction)), " ".join(jieba.cut(label))
    if not hypothesis.split() or not reference.split():
        scores = {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    else:
        scores = {name: value["f"] * 100 for name, value in rouge.get_scores(hypothesis, reference)[0].items()}
    scores["bleu-4"] = sentence_bleu([list(label)], list(prediction), smoothing_function=smoothing) * 100
    return {name: round(scores[name], 4) for name in NAMES}


def similarity(predictions: list[str], labels: list[str]) -> dict[str, float]:
    """Mean of each score over the examples (LLaMA-Factory's predict_* metrics without the prefix)."""
    libraries = _libraries()
    rows = [example_scores(p, l, libraries) for p, l in zip(predictions, labels, strict=True)]
    return {name: sum(r[name] for r in rows) / len(rows) if rows else 0.0 for name in NAMES}
