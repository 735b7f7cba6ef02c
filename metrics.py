"""The scores of Sec. 3.1: WA, the accuracy over utterances, and UA, the mean of the per-class recalls;
and macro-F1, which cross-corpus results report beside them."""
from sklearn.metrics import accuracy_score, confusion_matrix, recall_score


def scores(y_true, y_pred, classes):
    """WA = accuracy over utterances; UA = mean of the per-class recalls (Sec. 3.1)."""
    labels = list(range(len(classes)))
    present = sorted(set(y_true.tolist()))
    return dict(wa=float(accuracy_score(y_true, y_pred)),
                ua=float(recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
                recall={c: float(r) for c, r in zip(classes, recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0))},
                confusion=confusion_matrix(y_true, y_pred, labels=labels).tolist())


def macro_f1(confusion):
    """The mean F1 of the classes the test holds (rows of the confusion matrix with utterances): 2 TP /
    (2 TP + FP + FN) each, as scikit-learn's f1_score(average="macro") over those classes."""
    import numpy as np
    c = np.asarray(confusion, dtype=float)
    present = c.sum(1) > 0
    tp = np.diag(c)
    f1 = 2 * tp / np.maximum(2 * tp + (c.sum(0) - tp) + (c.sum(1) - tp), 1e-12)
    return float(f1[present].mean()) if present.any() else 0.0
