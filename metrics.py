"""The scores of Sec. 3.1: WA, the accuracy over utterances, and UA, the mean of the per-class recalls."""
from sklearn.metrics import accuracy_score, confusion_matrix, recall_score


def scores(y_true, y_pred, classes):
    """WA = accuracy over utterances; UA = mean of the per-class recalls (Sec. 3.1)."""
    labels = list(range(len(classes)))
    present = sorted(set(y_true.tolist()))
    return dict(wa=float(accuracy_score(y_true, y_pred)),
                ua=float(recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
                recall={c: float(r) for c, r in zip(classes, recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0))},
                confusion=confusion_matrix(y_true, y_pred, labels=labels).tolist())
