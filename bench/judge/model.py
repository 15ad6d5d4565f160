"""The classifier: TF-IDF (word 1-2 grams + char 3-5 grams) and a class-
weighted logistic regression, with a decision threshold chosen by cross-
validation on the tuning split so that the bank's own questions pass."""

from __future__ import annotations

import time
from pathlib import Path

import joblib
import numpy as np
import sklearn
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import FeatureUnion, make_pipeline

from common import Example, fingerprint

BUNDLE_VERSION = 1

C_VALUES = (1.0, 10.0, 100.0)
FOLDS = 5
# Bank questions that must pass, out-of-fold (the gate is 99%).
BANK_PASS = 0.99
# Added to the highest out-of-fold score of a passing bank question: the
# threshold sits this far above it (in probability), so a bank question a
# little more attack-like than any seen still passes.
MARGIN = 0.05


def _stratum(e: Example) -> str:
    return "bank" if e.bank else e.category


def threshold_for(scores: np.ndarray, bank: np.ndarray) -> float:
    """Lowest threshold (score >= threshold is an attack) that lets at least
    BANK_PASS of the bank questions through, plus MARGIN."""
    bank_scores = np.sort(scores[bank])[::-1]
    allowed = int(np.floor((1 - BANK_PASS) * len(bank_scores)))  # misses allowed
    top = bank_scores[allowed] if allowed < len(bank_scores) else 0.0
    return float(min(top + MARGIN, 0.99))


def make_features():
    return FeatureUnion(
        [
            ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True)),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), min_df=2, sublinear_tf=True, lowercase=True)),
        ]
    )


def make_regression(c: float):
    return LogisticRegression(C=c, class_weight="balanced", max_iter=2000)


def cross_validate(train: list[Example]) -> dict[float, np.ndarray]:
    """Out-of-fold attack probabilities for the tuning split, for each C
    (the features are fitted once a fold: they do not depend on C)."""
    texts = [e.text for e in train]
    y = np.array([e.attack for e in train])
    strata = np.array([_stratum(e) for e in train])
    oof = {c: np.zeros(len(train)) for c in C_VALUES}
    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=0)
    for fit_idx, test_idx in folds.split(texts, strata):
        features = make_features()
        x_fit = features.fit_transform([texts[i] for i in fit_idx])
        x_test = features.transform([texts[i] for i in test_idx])
        for c in C_VALUES:
            regression = make_regression(c).fit(x_fit, y[fit_idx])
            oof[c][test_idx] = regression.predict_proba(x_test)[:, 1]
    return oof


def train(examples: list[Example], log=print) -> dict:
    """Trains on the tuning split only; returns the model bundle."""
    started = time.time()
    train_set = [e for e in examples if not e.held]
    y = np.array([e.attack for e in train_set])
    bank = np.array([e.bank for e in train_set])
    public = np.array([e.category == "benign_public" for e in train_set])
    oofs = cross_validate(train_set)
    best = None
    for c, oof in oofs.items():
        t = threshold_for(oof, bank)
        recall = float(np.mean(oof[y] >= t))
        pub_pass = float(np.mean(oof[public] < t)) if public.any() else float("nan")
        bank_pass = float(np.mean(oof[bank] < t))
        log(
            f"  C={c:g}: {FOLDS}-fold out-of-fold threshold {t:.3f}: attacks refused {100 * recall:.1f}%, "
            f"bank passed {100 * bank_pass:.1f}%, benign_public passed {100 * pub_pass:.1f}%"
        )
        key = (recall, pub_pass)
        if best is None or key > best[0]:
            best = (key, c, t)
    _, c, t = best
    clf = make_pipeline(make_features(), make_regression(c)).fit([e.text for e in train_set], y)
    log(
        f"  chose C={c:g}, threshold {t:.3f} "
        f"(trained on the {len(train_set)} tuning texts in {time.time() - started:.1f} s)"
    )
    return {"kind": "tfidf-logreg", "classifier": clf, "threshold": t, "C": c, "oof": oofs[c]}


def score(bundle: dict, texts: list[str]) -> np.ndarray:
    return bundle["classifier"].predict_proba(texts)[:, 1]


def load_or_train(examples: list[Example], path: Path, retrain: bool = False, log=print) -> dict:
    """The saved bundle at `path` when it was trained on this tuning split
    with this scikit-learn; otherwise trains and saves one."""
    want = {"fingerprint": fingerprint(examples), "sklearn": sklearn.__version__, "version": BUNDLE_VERSION}
    if not retrain and path.exists():
        try:
            bundle = joblib.load(path)
            if all(bundle.get(k) == v for k, v in want.items()):
                log(f"  loaded {path} (C={bundle['C']:g}, threshold {bundle['threshold']:.3f})")
                return bundle
            log(f"  {path} was trained on other data or another scikit-learn: retraining")
        except Exception as err:  # a broken or foreign file: retrain
            log(f"  could not load {path} ({err}): retraining")
    bundle = train(examples, log=log)
    bundle.update(want)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    joblib.dump(bundle, tmp)
    tmp.replace(path)
    log(f"  saved {path}")
    return bundle
